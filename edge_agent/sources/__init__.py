"""Sensor sources: where readings come from (CSV replay, stdin, MQTT, plugins)."""
