"""The agent's network side: the one MQTT link and its reconnect policy."""
