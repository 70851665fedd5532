"""Telemetry and anomaly delivery: batching, the durable outbox and the sender."""
