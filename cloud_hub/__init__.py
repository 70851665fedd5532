"""The edgeloop cloud hub: REST API, MQTT ingest and publishing, training and quantization."""

__version__ = "0.1.0"
