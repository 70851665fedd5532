"""Incident notifications: webhook rules, signed deliveries, retries with back-off."""
