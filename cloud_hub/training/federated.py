"""Training the PCA family from devices' sufficient statistics instead of their readings.

Devices with ``telemetry.upload = "summaries"`` send, in their drift summaries, the count, mean
and scatter of their normal windows and each channel's count, mean and M2
(:class:`shared.messages.TrainingStats`). :func:`merge_stats` pools them exactly (Chan et al.'s
parallel formulas). From the pool the hub computes what central training computes from the
readings:

- the z-score normalization: each channel's pooled mean and population standard deviation;
- the PCA model: the top ``latent`` eigenvectors of the normalised windows' scatter matrix are
  the right singular vectors the central fit takes from the SVD of the centred windows, so the
  subspace is the same (up to rounding, and to the windows each side uses).

The threshold, the int8 calibration and the parity gate need windows to score. They come from
synthetic sequences with the pooled statistics: a Gaussian process whose every window has the
pooled mean and covariance (each new reading drawn given the previous ``window - 1``, which is a
vector autoregression of that order). So consecutive windows overlap as real ones do and the
device's score smoothing sees a sequence like the real one. The sequences are cut in segments
that each start from an independent window, so a slightly unstable autoregression (the pooled
covariance is estimated, not exactly that of a stationary process) cannot run away. No reading
of any device is used. The threshold is the one a Gaussian fleet with these moments would get;
real readings have heavier tails, so a device may calibrate its own on its first windows
(``model.calibration_windows``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_hub.core.states import TrainingStage
from cloud_hub.training.artifact import ModelArtifact, TrainingProgress, TrainingSpec
from cloud_hub.training.dataset import Dataset
from cloud_hub.training.errors import TrainingError
from shared.manifest import Normalization
from shared.scatter import unpack_upper
from shared.scoring import sliding_windows, window_scores

__all__ = ["PooledStats", "federated_dataset", "merge_stats", "pca_from_stats",
           "run_federated_training", "synthetic_segments", "synthetic_sequence"]

Floats = npt.NDArray[np.float64]
_MIN_SCALE = 1e-9


@dataclass(frozen=True)
class PooledStats:
    """Statistics of every contributing device's normal windows, pooled."""

    window: int
    channels: list[str]
    windows: int
    mean: Floats  # window × channels features, flattened row by row
    scatter: Floats
    reading_count: int
    reading_mean: Floats
    reading_m2: Floats
    devices: int = 1

    def normalization(self) -> Normalization:
        std = np.sqrt(self.reading_m2 / max(self.reading_count, 1))
        return Normalization(method="zscore", center=[float(x) for x in self.reading_mean],
                             scale=[float(x) for x in np.maximum(std, _MIN_SCALE)])

    def normalised(self) -> tuple[Floats, Floats]:
        """Mean and covariance of the windows in the z-score normalization."""
        norm = self.normalization()
        center = np.tile(np.asarray(norm.center), self.window)
        scale = np.tile(np.asarray(norm.scale), self.window)
        mean = (self.mean - center) / scale
        cov = self.scatter / np.outer(scale, scale) / max(self.windows - 1, 1)
        return mean, cov


def merge_stats(parts: Sequence[dict[str, Any]]) -> PooledStats:
    """Pool ``TrainingStats`` dicts (as drift summaries carry them) of one window and channel
    layout; :class:`TrainingError` when there are none or they do not fit together."""
    if not parts:
        raise TrainingError("no federated statistics to train from")
    first = parts[0]
    window, channels = int(first["window"]), list(first["channels"])
    features = window * len(channels)
    n = 0
    mean = np.zeros(features)
    scatter = np.zeros((features, features))
    rn = 0
    rmean = np.zeros(len(channels))
    rm2 = np.zeros(len(channels))
    for i, p in enumerate(parts):
        if int(p["window"]) != window or list(p["channels"]) != channels:
            raise TrainingError(
                f"statistics {i} are of window {p['window']} over {p['channels']}, the first "
                f"of window {window} over {channels}: devices must share [federated] window "
                "and channels")
        k = int(p["windows"])
        m = np.asarray(p["mean"], dtype=np.float64)
        s = unpack_upper(p["scatter"], features)
        total = n + k
        delta = m - mean
        scatter += s + np.outer(delta, delta) * (n * k / total)
        mean += delta * (k / total)
        n = total
        rk = int(p["reading_count"])
        if rk:
            rtotal = rn + rk
            rdelta = np.asarray(p["reading_mean"]) - rmean
            rm2 += np.asarray(p["reading_m2"]) + rdelta**2 * (rn * rk / rtotal)
            rmean += rdelta * (rk / rtotal)
            rn = rtotal
    return PooledStats(window=window, channels=channels, windows=n, mean=mean, scatter=scatter,
                       reading_count=rn, reading_mean=rmean, reading_m2=rm2,
                       devices=len(parts))


def pca_from_stats(stats: PooledStats, latent: int) -> tuple[Floats, Floats, Floats]:
    """Mean (normalised), basis (features × k) and every eigenvalue (descending) of the
    normalised windows' covariance."""
    mean, cov = stats.normalised()
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    k = max(1, min(latent, len(values)))
    return mean, vectors[:, :k], np.maximum(values, 0.0)


def synthetic_sequence(mean: Floats, cov: Floats, *, window: int, channels: int,
                       rows: int, seed: int | np.random.Generator) -> Floats:
    """``rows`` readings (normalised) of a Gaussian process whose windows have ``mean`` and
    ``cov``: the first window drawn whole, each later reading given the previous
    ``window - 1``."""
    rng = np.random.default_rng(seed)
    cov = (cov + cov.T) / 2 + np.eye(len(cov)) * 1e-9
    first = rng.multivariate_normal(mean, cov, method="eigh").reshape(window, channels)
    if rows <= window:
        return first[:rows]
    a = slice(0, (window - 1) * channels)
    b = slice((window - 1) * channels, window * channels)
    gain = np.linalg.lstsq(cov[a, a], cov[a, b], rcond=None)[0].T  # Σ_ba Σ_aa^-1
    residual = cov[b, b] - gain @ cov[a, b]
    residual = (residual + residual.T) / 2
    w, v = np.linalg.eigh(residual)
    noise_factor = v * np.sqrt(np.maximum(w, 0.0))
    out = np.empty((rows, channels))
    out[:window] = first
    mu_a, mu_b = mean[a], mean[b]
    for t in range(window, rows):
        previous = out[t - window + 1:t].ravel()
        out[t] = mu_b + gain @ (previous - mu_a) + noise_factor @ rng.standard_normal(channels)
    return out


def synthetic_segments(mean: Floats, cov: Floats, *, window: int, channels: int, rows: int,
                       segment: int, seed: int) -> list[Floats]:
    """``rows`` readings in segments of ``segment``, each from an independent first window;
    a segment whose values leave +-50 spreads (a runaway autoregression) is drawn again."""
    rng = np.random.default_rng(seed)
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)  # noised statistics may not be PSD
    cov = (vectors * np.maximum(values, 0.0)) @ vectors.T
    out: list[Floats] = []
    tries = 0
    while sum(len(s) for s in out) < rows:
        piece = synthetic_sequence(mean, cov, window=window, channels=channels,
                                   rows=segment, seed=rng)
        tries += 1
        if np.all(np.isfinite(piece)) and np.abs(piece).max() < 50.0:
            out.append(piece)
        elif tries > 10 * (rows // segment + 1):
            raise TrainingError("the pooled statistics do not describe a stable process; "
                                "synthetic windows run away (too few windows?)")
    return out


def federated_dataset(stats: PooledStats, spec: TrainingSpec, *, rows: int = 24_000
                      ) -> tuple[Dataset, Floats, Floats]:
    """A :class:`Dataset` of synthetic normalised windows (for the threshold, the int8
    calibration and the parity gate), and the PCA mean and basis from the statistics."""
    if spec.family != "pca":
        raise TrainingError(f"federated statistics train the pca family, not {spec.family!r}")
    if spec.window != stats.window:
        raise TrainingError(f"spec.window {spec.window} differs from the devices' "
                            f"[federated] window {stats.window}")
    if stats.windows < 2 * stats.window * len(stats.channels):
        raise TrainingError(f"{stats.windows} windows from {stats.devices} device(s) are too "
                            f"few for {stats.window * len(stats.channels)} features")
    mean, basis, _ = pca_from_stats(stats, spec.latent)
    full_mean, cov = stats.normalised()
    segment = max(10 * stats.window, 200)
    segments = synthetic_segments(full_mean, cov, window=stats.window,
                                  channels=len(stats.channels), rows=rows, segment=segment,
                                  seed=spec.seed)
    cut = max(1, int(round(len(segments) * (1 - spec.validation_fraction))))
    train = np.concatenate([sliding_windows(s.astype(np.float32), spec.window,
                                            spec.train_stride) for s in segments[:cut]])
    parts = [sliding_windows(s.astype(np.float32), spec.window, spec.score_stride)
             for s in segments[cut:] or segments[-1:]]
    validation = np.concatenate(parts)
    data = Dataset(normalization=stats.normalization(), train=train, validation=validation,
                   validation_lengths=[len(p) for p in parts], validation_labels=None,
                   training_rows=stats.reading_count, total_train_windows=stats.windows)
    return data, mean, basis


def run_federated_training(
    stats: PooledStats, spec: TrainingSpec, *,
    progress: Callable[[TrainingProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> ModelArtifact:
    """The PCA model from pooled statistics, then the same threshold, conversion and parity
    gate as :func:`cloud_hub.training.pipeline.run_training`."""
    from cloud_hub.quantize.convert import keras_reconstruct
    from cloud_hub.quantize.parity import smoothed_scores
    from cloud_hub.training.families import get_family, to_layout
    from cloud_hub.training.families.pca import pca_model
    from cloud_hub.training.pipeline import (
        FittedModel,
        _choose_threshold,
        check_spec,
        convert_and_gate,
        score_spec_for,
    )
    from cloud_hub.training.tf_env import seed_everything

    started = time.perf_counter()
    report = progress or (lambda update: None)
    report(TrainingProgress(stage=TrainingStage.PREPARING, epochs=1))
    check_spec(spec, len(stats.channels))
    data, mean, basis = federated_dataset(stats, spec)
    seed_everything(spec.seed)
    family = get_family("pca")
    train_x = to_layout(data.train, family.layout)
    val_x = to_layout(data.validation, family.layout)
    report(TrainingProgress(stage=TrainingStage.FITTING, epochs=1, fraction=0.05))
    model = pca_model(mean, basis)
    report(TrainingProgress(stage=TrainingStage.THRESHOLDING, epochs=1, epoch=1, fraction=0.8))
    float_rec = keras_reconstruct(model, val_x)
    score = score_spec_for(spec, val_x, float_rec, len(stats.channels))
    val_scores = smoothed_scores(window_scores(val_x, float_rec, score),
                                 data.validation_lengths, spec.smoothing)
    fitted = FittedModel(
        model=model, family=family, data=data, train_x=train_x, validation_x=val_x,
        float_reconstructions=float_rec, validation_scores=val_scores, score=score,
        threshold=_choose_threshold(val_scores, data, spec),
        fit_seconds=time.perf_counter() - started)
    artifact = convert_and_gate(fitted, stats.channels, spec, report, cancel, started)
    extra = {**artifact.extra, "federated": {
        "devices": stats.devices, "windows": stats.windows, "readings": stats.reading_count,
        "synthetic_windows": len(data.train) + len(data.validation),
        "note": "PCA and normalization from pooled statistics; threshold, int8 calibration "
                "and parity gate on a synthetic Gaussian sequence with their moments"}}
    return ModelArtifact(**{**artifact.__dict__, "extra": extra})
