"""Running a TFLite model on windows of readings."""
