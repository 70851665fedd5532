"""Upper (and lower) bounds of every training parameter, in one place.

The REST API refuses a request outside them with a 422 naming the field and the bound
(``cloud_hub.api.schemas.TrainingSpecBody``); ``check_spec`` applies the same bounds to any
spec the training pipeline is handed. They bound what one job may cost: the window and the
layer sizes bound the model, epochs × windows × batch bound the fit.
"""

from __future__ import annotations

__all__ = [
    "MAX_BATCH_SIZE", "MAX_EPOCHS", "MAX_HIDDEN", "MAX_LATENT", "MAX_PATIENCE", "MAX_SEED",
    "MAX_SMOOTHING", "MAX_STRIDE", "MAX_THRESHOLD_FACTOR",
    "MAX_TRAINING_DEVICES", "MAX_TRAIN_WINDOWS", "MAX_WINDOW", "MIN_TRAIN_WINDOWS",
]

MAX_WINDOW = 4096  # readings per window
MAX_STRIDE = 4096  # readings between two windows (training or scoring)
MAX_HIDDEN = 4096  # units of the widest hidden layer
MAX_LATENT = 1024  # units of the bottleneck
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 8192
MAX_SMOOTHING = 1000  # windows averaged into one score
MAX_THRESHOLD_FACTOR = 100.0
MIN_TRAIN_WINDOWS = 64
MAX_TRAIN_WINDOWS = 200_000  # windows the fit sees (evenly subsampled beyond the spec's value)
MAX_PATIENCE = 1000
MAX_SEED = 2**32 - 1
MAX_TRAINING_DEVICES = 10_000  # devices named in one training request
