"""Training: windows from fleet telemetry, model families, thresholds, the training job."""
