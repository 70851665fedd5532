"""Dense autoencoder over flattened windows: window·channels → hidden → latent → hidden → back."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.families.base import EpochCallback, ModelFamily, fit_autoencoder
from cloud_hub.training.tf_env import import_keras

__all__ = ["DenseAutoencoder"]


class DenseAutoencoder(ModelFamily):
    name = "dense_ae"
    layout = "flat"
    description = "dense autoencoder"

    def train(
        self,
        train: npt.NDArray[np.float32],
        validation: npt.NDArray[np.float32],
        spec: TrainingSpec,
        *,
        on_epoch: EpochCallback,
        cancel: threading.Event | None,
    ) -> Any:
        keras = import_keras()
        size = train.shape[1]
        inputs = keras.Input((size,), name="window")
        x = keras.layers.Dense(spec.hidden, activation="relu")(inputs)
        x = keras.layers.Dense(spec.latent, activation="relu")(x)
        x = keras.layers.Dense(spec.hidden, activation="relu")(x)
        outputs = keras.layers.Dense(size, name="reconstruction")(x)
        model = keras.Model(inputs, outputs, name="dense_ae")
        return fit_autoencoder(model, train, validation, spec, on_epoch=on_epoch, cancel=cancel)
