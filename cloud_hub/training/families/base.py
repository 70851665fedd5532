"""The interface every model family implements: train a Keras reconstruction model on windows.

A family returns a Keras model mapping a window to its reconstruction, in the family's input
layout: ``flat`` (window × channels values in one vector) or ``sequence`` (window, channels).
Everything after training (threshold, conversion, parity, scoring on the device) is the same for
every family.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from cloud_hub.training.artifact import TrainingSpec

__all__ = ["EpochCallback", "ModelFamily", "fit_autoencoder", "to_layout"]

# (epoch, epochs, loss, val_loss) after each epoch
EpochCallback = Callable[[int, int, float | None, float | None], None]

Layout = Literal["flat", "sequence"]


class ModelFamily(ABC):
    name: ClassVar[str]
    layout: ClassVar[Layout]
    description: ClassVar[str]

    def check(self, spec: TrainingSpec, channels: int) -> str | None:
        """Why this family cannot train with ``spec`` (None when it can)."""
        return None

    @abstractmethod
    def train(
        self,
        train: npt.NDArray[np.float32],
        validation: npt.NDArray[np.float32],
        spec: TrainingSpec,
        *,
        on_epoch: EpochCallback,
        cancel: threading.Event | None,
    ) -> Any:
        """A fitted ``keras.Model``; ``train``/``validation`` are already in :attr:`layout`."""


def to_layout(windows: npt.NDArray[np.float32], layout: Layout) -> npt.NDArray[np.float32]:
    """(n, window, channels) windows reshaped for a family's input."""
    if layout == "flat":
        return windows.reshape(len(windows), -1)
    return windows


def fit_autoencoder(
    model: Any,
    train: npt.NDArray[np.float32],
    validation: npt.NDArray[np.float32],
    spec: TrainingSpec,
    *,
    on_epoch: EpochCallback,
    cancel: threading.Event | None,
) -> Any:
    """Fit ``model`` to reconstruct its input, with progress, cancel and early stopping."""
    from cloud_hub.training.tf_env import import_keras

    keras = import_keras()

    class _Progress(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            if cancel is not None and cancel.is_set():
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            loss, val = logs.get("loss"), logs.get("val_loss")
            on_epoch(
                epoch + 1,
                spec.epochs,
                None if loss is None else float(loss),
                None if val is None else float(val),
            )

    callbacks: list[Any] = [_Progress()]
    if spec.patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=spec.patience, restore_best_weights=True
            )
        )
    model.compile(optimizer=keras.optimizers.Adam(spec.learning_rate), loss="mse")
    model.fit(
        train,
        train,
        validation_data=(validation, validation),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return model
