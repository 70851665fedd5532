"""The wire protocol both the hub and the agents import: topics, messages, manifest, signing."""
