"""PCA baseline: reconstruct from the top ``latent`` principal components; the score is SPE (Q).

Fitted in closed form with an SVD, then written as two linear Dense layers
(``(x - mean) V Vᵀ + mean``) so it converts, quantizes and runs on the device exactly like the
autoencoders. With ``score_method="mse"`` the device's score is the Q statistic divided by the
window size. (Hotelling's T² is not a reconstruction error, so it is not part of this family.)
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.families.base import EpochCallback, ModelFamily
from cloud_hub.training.tf_env import import_keras

__all__ = ["PcaBaseline", "pca_model"]


def pca_model(mean: npt.NDArray[np.floating], basis: npt.NDArray[np.floating]) -> Any:
    """``(x - mean) V Vᵀ + mean`` as two linear Dense layers (``basis`` V: features × k); the
    federated fit (:mod:`cloud_hub.training.federated`) builds the same model from statistics."""
    keras = import_keras()
    size, k = basis.shape
    inputs = keras.Input((size,), name="window")
    project = keras.layers.Dense(k, name="project")
    restore = keras.layers.Dense(size, name="reconstruction")
    model = keras.Model(inputs, restore(project(inputs)), name="pca")
    project.set_weights([basis.astype(np.float32), (-mean @ basis).astype(np.float32)])
    restore.set_weights([basis.T.astype(np.float32), mean.astype(np.float32)])
    return model


class PcaBaseline(ModelFamily):
    name = "pca"
    layout = "flat"
    description = "PCA reconstruction (Q/SPE) baseline"

    def train(
        self,
        train: npt.NDArray[np.float32],
        validation: npt.NDArray[np.float32],
        spec: TrainingSpec,
        *,
        on_epoch: EpochCallback,
        cancel: threading.Event | None,
    ) -> Any:
        x = train.astype(np.float64)
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = max(1, min(spec.latent, vt.shape[0]))
        basis = vt[:k].T  # (size, k)
        model = pca_model(mean, basis)

        def loss_of(w: npt.NDArray[np.float32]) -> float:
            centred = w.astype(np.float64) - mean
            rec = centred @ basis @ basis.T
            return float(((centred - rec) ** 2).mean())

        on_epoch(1, 1, loss_of(train), loss_of(validation))
        return model
