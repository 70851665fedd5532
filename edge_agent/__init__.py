"""The edgeloop device agent: runs a TFLite model next to the sensors, streams results to the hub.

It never imports TensorFlow, FastAPI or SQLModel (a test checks this in a subprocess).
"""

__version__ = "0.1.0"
