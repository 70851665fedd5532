"""SKAB, outlier problem: per file the first 400 rows train, the rest test; F1/FAR/MAR pooled.

Every decision comes from the agent's own detector (:class:`edge_agent.detect.detector.Detector`,
with its adaptation) running the int8 TFLite model through the agent's runtime, row by row; the
same model in float32 TFLite runs beside it as the reference. ``train_on="anomaly-free"`` fits
one model on ``anomaly-free/anomaly-free.csv`` instead and only calibrates each file's
normalisation and threshold on its first 400 rows. With ``train_on="file"`` the same protocol is
also run on ``anomaly-free.csv`` when it is there: its false alarm rate says how the detector
copes with a long recording of normal operation it was not fitted to.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.detect.adaptation import AdaptationSettings
from edge_agent.detect.detector import Detector as DeviceDetector
from edge_agent.detect.records import Reconstructor
from shared.manifest import Quantization
from shared.scoring import fit_normalization
from simulator.evaluate.datasets import SkabFile, load_skab_file, skab_files
from simulator.evaluate.detector import Detector, DetectorConfig, fit_detector
from simulator.evaluate.device import Replay, device_model, replay
from simulator.evaluate.metrics import PointwiseCounts, pointwise_counts

__all__ = [
    "DEFAULT_SKAB_ADAPTATION",
    "LEADERBOARD",
    "FileModels",
    "SkabFileResult",
    "SkabResult",
    "SkabSetting",
    "evaluate_skab",
    "fit_file_models",
    "leaderboard_rows",
    "score_file",
]

TRAIN_ROWS = 400
ANOMALY_FREE = "anomaly-free/anomaly-free"

# Published SKAB leaderboard, outlier problem, all 34 files (see ../shared/data/README.md).
LEADERBOARD: list[tuple[str, float, float, float]] = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("PCA T²+Q", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("Isolation forest", 0.29, 2.56, 82.89),
]

# The device follows each channel's center at 0.3 % per reading on windows it judges normal
# (spread and threshold fixed). Chosen by `simulator evaluate --dataset skab --select`.
# Measured on valve1 (16 files): F1 0.854, FAR 9.9 %, MAR 19.1 % (float32 0.857 / 10.3 / 18.3);
# leave-one-file-out 0.855 / 9.9 / 19.0; anomaly-free.csv FAR 6.7 % (92 % without adaptation).
DEFAULT_SKAB_ADAPTATION = AdaptationSettings(normalization=True, rate=0.003, holdoff_windows=0)


@dataclass(frozen=True)
class SkabSetting:
    """Everything that decides a SKAB run; one setting for every file."""

    config: DetectorConfig = dataclasses.field(default_factory=DetectorConfig)
    adaptation: AdaptationSettings = DEFAULT_SKAB_ADAPTATION

    def describe(self) -> dict[str, Any]:
        adaptation = {f: getattr(self.adaptation, f) for f in self.adaptation.__struct_fields__}
        return {"model": self.config.describe(), "adaptation": adaptation}


@dataclass(frozen=True)
class FileModels:
    """One file's fitted model (int8, and float32 as the reference) and its thresholds."""

    device: Detector
    reference: Detector | None
    threshold: float
    float_threshold: float


@dataclass(frozen=True)
class SkabFileResult:
    name: str
    test_rows: int
    anomalous_rows: int
    device: PointwiseCounts
    reference: PointwiseCounts  # the float32 model, same rows
    threshold: float  # the model's (before adaptation)
    decision_agreement: float  # device vs float decisions on the test rows
    device_replay: Replay  # per row: score and threshold on the device path
    reference_replay: Replay
    labels: npt.NDArray[np.int8]
    flags: npt.NDArray[np.bool_]  # device decisions, whole file
    values: npt.NDArray[np.float64]  # the readings, for plots
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
    setting: SkabSetting
    train_on: str
    files: list[SkabFileResult]
    device: PointwiseCounts
    reference: PointwiseCounts  # the float32 model, same rows
    anomaly_free: SkabFileResult | None  # the protocol on anomaly-free.csv (false alarms only)
    tflite_bytes: int
    runtime: str
    seconds: float
    selection: dict[str, Any] | None = None

    @property
    def config(self) -> DetectorConfig:
        return self.setting.config

    def summary(self) -> dict[str, Any]:
        free = self.anomaly_free
        return {
            "dataset": "skab",
            "f1": round(self.device.f1, 4),
            "far": round(self.device.far, 2),
            "mar": round(self.device.mar, 2),
            "float_f1": round(self.reference.f1, 4),
            "float_far": round(self.reference.far, 2),
            "float_mar": round(self.reference.mar, 2),
            "anomaly_free_far": round(free.device.far, 2) if free else None,
            "files": len(self.files),
            "rows": sum(f.test_rows for f in self.files),
            "anomalous_rows": sum(f.anomalous_rows for f in self.files),
            "quantization": self.config.quantization.value,
            "runtime": self.runtime,
            "tflite_bytes": self.tflite_bytes,
            "train_on": self.train_on,
            "protocol": f"per file: first {TRAIN_ROWS} rows train, the rest test; every row "
            "pushed in order through the agent's detector (int8 TFLite, adaptation); pointwise, "
            "pooled over files",
            "detector": self.setting.describe(),
            "selection": self.selection,
            "seconds": round(self.seconds, 1),
            "leaderboard": leaderboard_rows(self),
            "per_file": [f.summary() for f in self.files],
        }


def fit_file_models(
    f: SkabFile, config: DetectorConfig, shared: Detector | None = None, *, reference: bool = True
) -> FileModels:
    """The model one file is scored with: its own (trained on its first rows) or ``shared``."""
    train = f.values[:TRAIN_ROWS]
    if shared is None:
        device = fit_detector(train, config)
        floats = (
            fit_detector(train, dataclasses.replace(config, quantization=Quantization.FLOAT32))
            if reference
            else None
        )
        return FileModels(device, floats, device.threshold, floats.threshold if floats else 0.0)
    # The shared model sees each file in that file's own units: normalisation and threshold
    # both come from its first rows (per-device calibration); the float Keras model is the
    # reference of a shared model.
    device = dataclasses.replace(
        shared, normalization=fit_normalization(train, config.normalization)
    )
    threshold, float_threshold = device.thresholds(device.scores(train))
    return FileModels(device, None, threshold, float_threshold)


def score_file(
    f: SkabFile,
    models: FileModels,
    adaptation: AdaptationSettings,
    *,
    runtime: Reconstructor | None = None,
) -> SkabFileResult:
    """Push every row of ``f`` through the agent's detector; pointwise counts on test rows."""
    labels = f.labels if f.labels is not None else np.zeros(len(f.values), dtype=np.int8)
    device = _stream(f, models.device, models.threshold, adaptation, runtime)
    if models.reference is not None:
        reference = _stream(f, models.reference, models.float_threshold, adaptation, None)
    else:
        reference = device
    flags = _flags(device)
    float_flags = _flags(reference)
    test = labels[TRAIN_ROWS:]
    return SkabFileResult(
        name=f.name,
        test_rows=len(test),
        anomalous_rows=int(test.sum()),
        device=pointwise_counts(flags[TRAIN_ROWS:], test),
        reference=pointwise_counts(float_flags[TRAIN_ROWS:], test),
        threshold=models.threshold,
        decision_agreement=float((flags[TRAIN_ROWS:] == float_flags[TRAIN_ROWS:]).mean()),
        device_replay=device,
        reference_replay=reference,
        labels=labels,
        flags=flags,
        values=f.values,
        channels=f.channels,
    )


def _stream(
    f: SkabFile,
    model: Detector,
    threshold: float,
    adaptation: AdaptationSettings,
    runtime: Reconstructor | None,
) -> Replay:
    detector = DeviceDetector(f.channels, adaptation=adaptation)
    detector.activate(device_model(model, f.channels, threshold=threshold, runtime=runtime))
    timestamps = np.arange(len(f.values), dtype=np.float64)  # 1 Hz; the detector needs order only
    return replay(detector, timestamps, f.values)


def _flags(r: Replay) -> npt.NDArray[np.bool_]:
    """The decision the detector took at each row (its smoothed score above its threshold)."""
    return np.nan_to_num(r.scores, nan=-np.inf) > np.nan_to_num(r.thresholds, nan=np.inf)


def evaluate_skab(
    root: Path,
    setting: SkabSetting | None = None,
    *,
    subsets: list[str] | None = None,
    train_on: str = "file",
    progress: Callable[[int, int, str], None] | None = None,
) -> SkabResult:
    """Run the protocol over every labelled file under ``root``."""
    setting = setting or SkabSetting()
    config = setting.config
    if train_on not in ("file", "anomaly-free"):
        raise ValueError(f"train_on must be 'file' or 'anomaly-free', got {train_on!r}")
    started = time.perf_counter()
    files = skab_files(root, subsets)
    free = _anomaly_free(root)
    shared: Detector | None = None
    if train_on == "anomaly-free":
        if free is None:
            raise ValueError(f"{root}: no {ANOMALY_FREE}.csv to train on")
        _check_channels(free, files[0])
        shared = fit_detector(free.values, config)
    for f in files:
        _check_channels(f, files[0])
        if len(f.values) <= TRAIN_ROWS + config.window:
            raise ValueError(f"{f.name}: {len(f.values)} rows; need more than {TRAIN_ROWS}")
    results = []
    for i, f in enumerate(files):
        if progress:
            progress(i, len(files) + 1, f.name)
        results.append(score_file(f, fit_file_models(f, config, shared), setting.adaptation))
    free_result = None
    if free is not None and shared is None:
        if progress:
            progress(len(files), len(files) + 1, free.name)
        _check_channels(free, files[0])
        free_result = score_file(free, fit_file_models(free, config), setting.adaptation)
    if progress:
        progress(len(files) + 1, len(files) + 1, "done")
    sample = shared or fit_detector(files[0].values[:TRAIN_ROWS], config)
    return SkabResult(
        setting=setting,
        train_on=train_on,
        files=results,
        device=sum((r.device for r in results), PointwiseCounts(0, 0, 0, 0)),
        reference=sum((r.reference for r in results), PointwiseCounts(0, 0, 0, 0)),
        anomaly_free=free_result,
        tflite_bytes=len(sample.tflite),
        runtime=sample.runtime.runtime,
        seconds=time.perf_counter() - started,
    )


def _anomaly_free(root: Path) -> SkabFile | None:
    path = root / f"{ANOMALY_FREE}.csv"
    return load_skab_file(path, root) if path.exists() else None


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
