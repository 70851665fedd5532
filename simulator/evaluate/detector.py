"""The detector under evaluation: the hub's model families, scored through the device's path.

Per file (or per device), :func:`fit_detector` normalises with statistics of the training rows,
fits a model family from ``cloud_hub.training.families`` on sliding windows, converts it with
``cloud_hub.quantize.convert`` and keeps both the float Keras model and the TFLite bytes.
:meth:`Detector.scores` runs every window through :class:`TfliteModel` (the agent's runtime)
and through the float model, scoring and smoothing with :mod:`shared.scoring` exactly as the
agent does. Thresholds are calibrated on the detector's own training windows (the SKAB
protocol's "first 400 rows"), as an agent's per-device calibration would.

The model chosen on SKAB valve1 (16 files, int8 TFLite): PCA reconstruction (Q/SPE) per file,
window 10, 32 of 80 components, z-score from the file's 400 training rows, smoothing over 20
windows, int8 calibrated on the training windows plus the same scaled × 8 (without it, test
readings beyond the training range clip at the int8 input: F1 0.807, FAR 33.7). Its threshold
factor (× the largest training score) and the device's adaptation are chosen by leave one file
out (``simulator evaluate --dataset skab --select``, :mod:`simulator.evaluate.choose`): factor
2.0 with each channel's center following at 0.3 % per reading on normal windows gives F1 0.855,
FAR 9.9 %, MAR 19.0 %, and 6.6 % false alarms on anomaly-free.csv, where the same model without
adaptation raises 92 % (that recording's operating point moves far from its first 400 rows).
Models that lost, before adaptation: window 20 (0.822 / 10.3 / 23.9); min-max scaling (int8
0.807 / 34.3 / 12.2); a dense AE (0.808 / 29.2 / 15.2); a Conv1D AE, window 12 (0.803 / 34.8 /
12.8); one PCA model trained on anomaly-free.csv with per-file normalisation and threshold
(best 0.623 / 23.7 / 45.5).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_hub.quantize.convert import convert, keras_reconstruct
from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.families import get_family, to_layout
from cloud_hub.training.tf_env import seed_everything
from edge_agent.inference.runtime import TfliteModel
from shared.manifest import Normalization, Quantization, ScoreSpec
from shared.scoring import fit_normalization, normalize, sliding_windows, smooth, window_scores

__all__ = ["DetectorConfig", "Detector", "Scores", "fit_detector"]


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that decides the detector; the SKAB winner is the default."""

    family: str = "pca"
    window: int = 10
    latent: int = 32
    hidden: int = 32
    epochs: int = 40
    learning_rate: float = 3e-3
    normalization: str = "zscore"
    score_method: str = "mse"
    smoothing: int = 20
    threshold_quantile: float = 1.0  # of the training windows' smoothed scores
    threshold_factor: float = 2.0
    quantization: Quantization = Quantization.INT8
    # int8 calibration also sees the training windows scaled by this (1: as they are), so
    # readings beyond the training range are not clipped by the input quantization
    representative_scale: float = 8.0
    seed: int = 0

    def spec(self) -> TrainingSpec:
        return TrainingSpec(
            family=self.family,
            window=self.window,
            hidden=self.hidden,
            latent=self.latent,
            epochs=self.epochs,
            batch_size=32,
            learning_rate=self.learning_rate,
            normalization=self.normalization,
            score_method=self.score_method,
            smoothing=self.smoothing,
            quantization=self.quantization,
            seed=self.seed,
            patience=0,
        )

    def describe(self) -> dict[str, Any]:
        items = self.__dict__.items()
        return {k: (v.value if isinstance(v, Quantization) else v) for k, v in items}


@dataclass(frozen=True)
class Scores:
    """One smoothed score per row (NaN before the first full window), both paths."""

    device: npt.NDArray[np.float64]  # through the TFLite model on the device runtime
    reference: npt.NDArray[np.float64]  # through the float Keras model


@dataclass
class Detector:
    config: DetectorConfig
    normalization: Normalization
    model: Any  # keras.Model
    tflite: bytes
    runtime: TfliteModel
    layout: str
    threshold: float = float("nan")  # device path
    float_threshold: float = float("nan")
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def score_spec(self) -> ScoreSpec:
        if self.config.score_method == "mae":
            return ScoreSpec(method="mae", smoothing=self.config.smoothing)
        return ScoreSpec(method="mse", smoothing=self.config.smoothing)

    def scores(self, readings: npt.NDArray[np.floating]) -> Scores:
        """Score every window of contiguous ``readings``; row t gets the window ending at t."""
        w = self.config.window
        windows = sliding_windows(normalize(readings, self.normalization), w)
        x = to_layout(windows, "flat" if self.layout == "flat" else "sequence")
        device_raw = window_scores(x, self.runtime.reconstruct_many(x), self.score_spec)
        float_raw = window_scores(x, keras_reconstruct(self.model, x), self.score_spec)
        pad = np.full(min(w - 1, len(readings)), np.nan)
        return Scores(
            device=np.r_[pad, smooth(device_raw, self.config.smoothing)],
            reference=np.r_[pad, smooth(float_raw, self.config.smoothing)],
        )

    def thresholds(self, calibration: Scores) -> tuple[float, float]:
        """(device, float) thresholds from normal rows' scores: quantile × factor."""
        q, factor = self.config.threshold_quantile, self.config.threshold_factor
        device = calibration.device[np.isfinite(calibration.device)]
        floats = calibration.reference[np.isfinite(calibration.reference)]
        if len(device) == 0:
            raise ValueError(f"no full window of {self.config.window} rows to calibrate on")
        return float(np.quantile(device, q)) * factor, float(np.quantile(floats, q)) * factor


def fit_detector(
    train: npt.NDArray[np.floating],
    config: DetectorConfig,
    *,
    calibrate_on: npt.NDArray[np.floating] | None = None,
) -> Detector:
    """Fit on normal ``train`` readings; thresholds from ``calibrate_on`` (default ``train``)."""
    spec = config.spec()
    family = get_family(config.family)
    reason = family.check(spec, train.shape[1])
    if reason:
        raise ValueError(reason)
    norm = fit_normalization(train, config.normalization)
    windows = sliding_windows(normalize(train, norm), config.window)
    x = to_layout(windows, family.layout)
    seed_everything(config.seed)
    model = family.train(x, x, spec, on_epoch=lambda *a: None, cancel=threading.Event())
    representative = None
    if config.quantization is Quantization.INT8:
        scale = config.representative_scale
        representative = x if scale == 1.0 else np.concatenate([x, x * np.float32(scale)])
    tflite = convert(model, config.quantization, representative=representative)
    detector = Detector(
        config=config,
        normalization=norm,
        model=model,
        tflite=tflite,
        runtime=TfliteModel(tflite),
        layout=family.layout,
        info={"train_windows": len(x), "tflite_bytes": len(tflite)},
    )
    detector.threshold, detector.float_threshold = detector.thresholds(
        detector.scores(calibrate_on if calibrate_on is not None else train)
    )
    return detector
