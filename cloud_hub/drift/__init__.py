"""Drift on the hub: the fleet drift view, retrain policies and the retraining loop."""
