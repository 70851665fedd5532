"""SKAB, outlier problem: per file the first 400 rows train, the rest test; F1/FAR/MAR pooled.

Every decision comes from the device path (the TFLite model through the agent's runtime); the
float Keras model's result is computed beside it. ``train_on="anomaly-free"`` fits one model on
``anomaly-free/anomaly-free.csv`` instead and only calibrates each file's threshold on its
first 400 rows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.scoring import fit_normalization
from simulator.evaluate.datasets import SkabFile, load_skab_file, skab_files
from simulator.evaluate.detector import Detector, DetectorConfig, Scores, fit_detector
from simulator.evaluate.metrics import PointwiseCounts, pointwise_counts

__all__ = ["LEADERBOARD", "SkabFileResult", "SkabResult", "evaluate_skab", "leaderboard_rows"]

log = logging.getLogger(__name__)

TRAIN_ROWS = 400

# Published SKAB leaderboard, outlier problem, all 34 files (see ../shared/data/README.md).
LEADERBOARD: list[tuple[str, float, float, float]] = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("PCA T²+Q", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("Isolation forest", 0.29, 2.56, 82.89),
]


@dataclass(frozen=True)
class SkabFileResult:
    name: str
    test_rows: int
    anomalous_rows: int
    device: PointwiseCounts
    reference: PointwiseCounts  # the float Keras model, same rows
    threshold: float
    float_threshold: float
    decision_agreement: float  # device vs float decisions on the test rows
    scores: Scores  # whole file, for plots
    labels: np.ndarray
    flags: np.ndarray  # device decisions, whole file
    values: np.ndarray  # the readings, for plots
    channels: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "test_rows": self.test_rows,
            "anomalous_rows": self.anomalous_rows,
            "f1": round(self.device.f1, 4),
            "far": round(self.device.far, 2),
            "mar": round(self.device.mar, 2),
            "float_f1": round(self.reference.f1, 4),
            "float_far": round(self.reference.far, 2),
            "float_mar": round(self.reference.mar, 2),
            "threshold": self.threshold,
            "decision_agreement": round(self.decision_agreement, 4),
        }


@dataclass(frozen=True)
class SkabResult:
    config: DetectorConfig
    train_on: str
    files: list[SkabFileResult]
    device: PointwiseCounts
    reference: PointwiseCounts  # the float Keras model, same rows
    tflite_bytes: int
    runtime: str
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": "skab",
            "f1": round(self.device.f1, 4),
            "far": round(self.device.far, 2),
            "mar": round(self.device.mar, 2),
            "float_f1": round(self.reference.f1, 4),
            "float_far": round(self.reference.far, 2),
            "float_mar": round(self.reference.mar, 2),
            "files": len(self.files),
            "rows": sum(f.test_rows for f in self.files),
            "anomalous_rows": sum(f.anomalous_rows for f in self.files),
            "quantization": self.config.quantization.value,
            "runtime": self.runtime,
            "tflite_bytes": self.tflite_bytes,
            "train_on": self.train_on,
            "protocol": f"per file: first {TRAIN_ROWS} rows train, the rest test; pointwise, "
            "pooled over files",
            "detector": self.config.describe(),
            "seconds": round(self.seconds, 1),
            "leaderboard": leaderboard_rows(self),
            "per_file": [f.summary() for f in self.files],
        }


def evaluate_skab(
    root: Path,
    config: DetectorConfig,
    *,
    subsets: list[str] | None = None,
    train_on: str = "file",
    progress: Callable[[int, int, str], None] | None = None,
) -> SkabResult:
    """Run the protocol over every labelled file under ``root``."""
    if train_on not in ("file", "anomaly-free"):
        raise ValueError(f"train_on must be 'file' or 'anomaly-free', got {train_on!r}")
    started = time.perf_counter()
    files = skab_files(root, subsets)
    shared_detector: Detector | None = None
    if train_on == "anomaly-free":
        free = load_skab_file(root / "anomaly-free" / "anomaly-free.csv", root)
        _check_channels(free, files[0])
        shared_detector = fit_detector(free.values, config)
    results = []
    for i, f in enumerate(files):
        if progress:
            progress(i, len(files), f.name)
        _check_channels(f, files[0])
        if len(f.values) <= TRAIN_ROWS + config.window:
            raise ValueError(f"{f.name}: {len(f.values)} rows; need more than {TRAIN_ROWS}")
        results.append(_evaluate_file(f, config, shared_detector))
    if progress:
        progress(len(files), len(files), "done")
    device = sum((r.device for r in results), PointwiseCounts(0, 0, 0, 0))
    floats = sum((r.reference for r in results), PointwiseCounts(0, 0, 0, 0))
    sample = shared_detector or fit_detector(files[0].values[:TRAIN_ROWS], config)
    return SkabResult(
        config=config,
        train_on=train_on,
        files=results,
        device=device,
        reference=floats,
        tflite_bytes=len(sample.tflite),
        runtime=sample.runtime.runtime,
        seconds=time.perf_counter() - started,
    )


def _evaluate_file(f: SkabFile, config: DetectorConfig, shared: Detector | None) -> SkabFileResult:
    assert f.labels is not None
    train = f.values[:TRAIN_ROWS]
    if shared is None:
        detector = fit_detector(train, config)
        threshold, float_threshold = detector.threshold, detector.float_threshold
    else:
        # The shared model sees each file in that file's own units: normalisation and
        # threshold both come from its first rows (per-device calibration).
        detector = dataclasses.replace(
            shared, normalization=fit_normalization(train, config.normalization)
        )
        threshold, float_threshold = detector.thresholds(detector.scores(train))
    scores = detector.scores(f.values)
    flags = np.nan_to_num(scores.device, nan=-np.inf) > threshold
    float_flags = np.nan_to_num(scores.reference, nan=-np.inf) > float_threshold
    labels = f.labels[TRAIN_ROWS:]
    return SkabFileResult(
        name=f.name,
        test_rows=len(labels),
        anomalous_rows=int(labels.sum()),
        device=pointwise_counts(flags[TRAIN_ROWS:], labels),
        reference=pointwise_counts(float_flags[TRAIN_ROWS:], labels),
        threshold=threshold,
        float_threshold=float_threshold,
        decision_agreement=float((flags[TRAIN_ROWS:] == float_flags[TRAIN_ROWS:]).mean()),
        scores=scores,
        labels=f.labels,
        flags=flags,
        values=f.values,
        channels=f.channels,
    )


def _check_channels(f: SkabFile, reference: SkabFile) -> None:
    if f.channels != reference.channels:
        raise ValueError(
            f"{f.name} has channels {f.channels}, {reference.name} has {reference.channels}"
        )


def leaderboard_rows(result: SkabResult) -> list[dict[str, Any]]:
    """Published rows plus ours (device path), best F1 first."""
    ours = (
        f"edgeloop {result.config.family} ({result.config.quantization.value} TFLite)",
        result.device.f1,
        result.device.far,
        result.device.mar,
    )
    rows = [
        {
            "detector": name,
            "f1": round(f1, 4),
            "far": round(far, 2),
            "mar": round(mar, 2),
            "ours": name == ours[0],
        }
        for name, f1, far, mar in [*LEADERBOARD, ours]
    ]
    return sorted(rows, key=lambda r: -float(r["f1"]))
