"""Conv1D autoencoder over (window, channels): two strided convolutions down, two transposed up."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.families.base import EpochCallback, ModelFamily, fit_autoencoder
from cloud_hub.training.tf_env import import_keras

__all__ = ["Conv1dAutoencoder"]

_KERNEL = 5


class Conv1dAutoencoder(ModelFamily):
    name = "conv1d_ae"
    layout = "sequence"
    description = "Conv1D autoencoder"

    def check(self, spec: TrainingSpec, channels: int) -> str | None:
        if spec.window % 4:
            return (
                "conv1d_ae halves the window twice, so window must be a multiple of 4, "
                f"got {spec.window}"
            )
        return None

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
        layers = keras.layers
        window, channels = train.shape[1], train.shape[2]
        inputs = keras.Input((window, channels), name="window")
        x = layers.Conv1D(spec.hidden, _KERNEL, strides=2, padding="same", activation="relu")(
            inputs
        )
        x = layers.Conv1D(spec.latent, _KERNEL, strides=2, padding="same", activation="relu")(x)
        x = layers.Conv1DTranspose(
            spec.hidden, _KERNEL, strides=2, padding="same", activation="relu"
        )(x)
        x = layers.Conv1DTranspose(
            spec.hidden, _KERNEL, strides=2, padding="same", activation="relu"
        )(x)
        outputs = layers.Conv1D(channels, 1, padding="same", name="reconstruction")(x)
        model = keras.Model(inputs, outputs, name="conv1d_ae")
        return fit_autoencoder(model, train, validation, spec, on_epoch=on_epoch, cancel=cancel)
