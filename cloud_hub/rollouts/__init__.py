"""Staged rollouts of a model version with canary, waves, policy and automatic rollback."""
