"""The hub's MQTT side: ingest of device streams and publishing of models and desired state."""
