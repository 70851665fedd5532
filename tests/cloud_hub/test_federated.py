"""Federated training: statistics pool exactly, and a PCA model trained from devices' statistics
decides like the one trained centrally on their readings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.dataset import prepare_dataset
from cloud_hub.training.errors import TrainingError
from cloud_hub.training.federated import (
    merge_stats,
    pca_from_stats,
    run_federated_training,
    synthetic_sequence,
)
from cloud_hub.training.pipeline import run_training
from edge_agent.drift.federated import FederatedSettings, WindowScatter
from shared.manifest import Quantization
from shared.scatter import pack_upper
from shared.scoring import normalize, sliding_windows, smooth, window_scores
from simulator.signals import SignalGenerator

pytestmark = pytest.mark.hub
SPEC = TrainingSpec(family="pca", window=8, latent=6, smoothing=5, threshold_quantile=0.999,
                    threshold_factor=1.5, quantization=Quantization.INT8, compare_modes=False,
                    validation_fraction=0.2, max_train_windows=100_000)


def _device(seed: int, rows: int = 5000) -> tuple[list[str], np.ndarray]:
    gen = SignalGenerator("pump", seed=seed, rate_hz=10.0)
    return gen.channels, gen.generate(rows).values


def _sent(values: np.ndarray, window: int, channels: list[str]) -> dict[str, Any]:
    """What the agent's WindowScatter would put in a drift summary for these readings."""
    scatter = WindowScatter(FederatedSettings(window=window, min_windows=10), len(channels))
    for i, row in enumerate(values):
        scatter.add(i / 10.0, row.tolist())
    n, mean, s, readings = scatter.take()
    return {"window": window, "stride": 1, "channels": channels, "windows": n,
            "mean": mean.tolist(), "scatter": pack_upper(s), "reading_count": readings.n,
            "reading_mean": readings.mean.tolist(), "reading_m2": readings.m2.tolist()}


def _windows64(values: np.ndarray, window: int) -> np.ndarray:
    return np.stack([values[i:i + window].ravel() for i in range(len(values) - window + 1)])


def test_pooled_statistics_equal_those_of_all_windows_together() -> None:
    channels, a = _device(1, 600)
    _, b = _device(2, 900)
    stats = merge_stats([_sent(a, 4, channels), _sent(b, 4, channels)])
    flat = np.concatenate([_windows64(a, 4), _windows64(b, 4)])
    assert stats.windows == len(flat) and stats.devices == 2
    assert np.allclose(stats.mean, flat.mean(axis=0))
    centred = flat - flat.mean(axis=0)
    assert np.allclose(stats.scatter, centred.T @ centred, rtol=1e-9, atol=1e-6)
    with pytest.raises(TrainingError, match="must share"):
        merge_stats([_sent(a, 4, channels), _sent(b, 5, channels)])


def test_the_principal_subspace_from_statistics_is_the_svd_s() -> None:
    channels, a = _device(3, 2000)
    stats = merge_stats([_sent(a, 8, channels)])
    norm = stats.normalization()
    z = sliding_windows(normalize(a, norm), 8, 1).reshape(-1, 8 * len(channels))
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    _, basis, _ = pca_from_stats(stats, 6)
    cosines = np.linalg.svd(vt[:6] @ basis, compute_uv=False)
    assert cosines.min() > 0.9999, "principal angles of (nearly) zero"


def test_the_synthetic_sequence_has_the_windows_moments() -> None:
    rng = np.random.default_rng(4)  # two correlated AR(1) channels of short memory
    a = np.zeros((20_000, 2))
    for t in range(1, len(a)):
        a[t] = 0.5 * a[t - 1] + rng.normal(0, 1, 2) @ np.array([[1.0, 0.6], [0.0, 0.8]])
    channels = ["x", "y"]
    stats = merge_stats([_sent(a + [5.0, -2.0], 4, channels)])
    mean, cov = stats.normalised()
    seq = synthetic_sequence(mean, cov, window=4, channels=len(channels), rows=40_000, seed=0)
    flat = _windows64(seq, 4)
    assert np.abs(flat.mean(axis=0) - mean).max() < 0.05
    assert np.abs(np.cov(flat.T) - cov).max() < 0.05 * np.abs(cov).max()


def test_federated_pca_decides_like_central_pca_on_the_same_data() -> None:
    devices = [(c, v[:4000], v[4000:]) for c, v in (_device(10 + i) for i in range(2))]
    channels = devices[0][0]
    readings = np.concatenate([v for _, v, _ in devices])
    central = run_training(readings, channels, SPEC, segments=[len(v) for _, v, _ in devices])
    cut = int(round(4000 * (1 - SPEC.validation_fraction)))  # the rows central training fits on
    stats = merge_stats([_sent(v[:cut], SPEC.window, channels) for _, v, _ in devices])
    federated = run_federated_training(stats, SPEC)
    assert federated.parity.passed and federated.extra["federated"]["devices"] == 2

    data = prepare_dataset(readings, channels, SPEC, segments=[len(v) for _, v, _ in devices])
    x = data.train.reshape(len(data.train), -1).astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    _, basis, _ = pca_from_stats(stats, SPEC.latent)
    assert np.linalg.svd(vt[:SPEC.latent] @ basis, compute_uv=False).min() > 0.999

    from edge_agent.inference.runtime import TfliteModel

    agree = total = 0
    for _, _, test in devices:  # the devices' next 100 s, held out, with a step on one channel
        test = test.copy()
        test[500:560, 2] += 6 * test[:, 2].std()
        decisions = []
        for artifact in (central, federated):
            x_test = sliding_windows(normalize(test, artifact.normalization), SPEC.window, 1)
            model = TfliteModel(artifact.tflite)
            scores = smooth(window_scores(x_test, model.reconstruct_many(x_test),
                                          artifact.score), SPEC.smoothing)
            decisions.append(scores > artifact.threshold)
        agree += int((decisions[0] == decisions[1]).sum())
        total += len(decisions[0])
        assert decisions[0][500:560].any() and decisions[1][500:560].any(), "the step caught"
    assert agree / total >= 0.97, agree / total
