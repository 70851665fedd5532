"""Quantization: Keras → TFLite conversion, the parity gate, and the mode comparison."""
