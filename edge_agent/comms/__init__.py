"""The agent's network side: the one MQTT link, the records it queues for its owner and its
reconnect policy."""
