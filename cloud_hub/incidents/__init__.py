"""Incidents: anomaly events of a device grouped while they keep coming, and their life cycle."""
