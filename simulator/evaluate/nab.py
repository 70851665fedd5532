"""NAB under its own rules, through the agent's detector: each file once, in order, learning online.

Per series: the model (the hub's PCA family, int8 TFLite) is trained on the probationary period
(NAB's ``min(15% of rows, 750)``, which is not scored), then every row of the file is pushed, in
order, through the agent's :class:`~edge_agent.detect.detector.Detector` with adaptation on.
The detector warms its adaptive threshold up on the probationary rows and goes on learning from
the windows it judges normal; nothing it uses at a row comes from a later row. A detection is an
event the device raised; NAB counts every detection, so the device raises one event per episode
(no re-alerts) and the evaluation keeps at most one per ``cooldown`` rows, as an alerting policy
would. The same model in float32 TFLite runs beside it as the reference.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from edge_agent.detect.adaptation import AdaptationSettings
from edge_agent.detect.detector import Detector as DeviceDetector
from edge_agent.detect.records import Reconstructor
from shared.manifest import Quantization
from simulator.evaluate.datasets import NabSeries, load_nab
from simulator.evaluate.detector import Detector, DetectorConfig, fit_detector
from simulator.evaluate.device import Replay, device_model, replay
from simulator.evaluate.metrics import (
    NAB_PROFILES,
    NabCounts,
    nab_file_score,
    nab_normalised,
    probationary_rows,
)

__all__ = [
    "DEFAULT_NAB_ADAPTATION",
    "DEFAULT_NAB_CONFIG",
    "NAB_PUBLISHED",
    "NabResult",
    "NabSetting",
    "detections_from_events",
    "detections_from_flags",
    "evaluate_nab",
    "evaluate_series",
    "fit_series_model",
    "nab_scores",
]

# Published standard-profile scores over all 58 NAB files (../shared/data/README.md).
NAB_PUBLISHED = {"ARTime": 74.9, "HTM": 70.5, "CAD OSE": 69.9, "random": 11.0}

# The model: PCA over windows of 24 readings, 4 components; the model's own threshold (used
# while the adaptive one warms up) is 1.5 × the largest smoothed score of its training windows.
DEFAULT_NAB_CONFIG = DetectorConfig(
    family="pca", window=24, latent=4, smoothing=3, threshold_quantile=1.0, threshold_factor=1.5
)
# The device's adaptation: threshold = 1.75 × the 95th percentile of the scores of windows it
# judged normal, each window weighing 0.1 % of that distribution (after a warm-up over the
# probationary period). Chosen by `simulator evaluate --dataset nab --select` (see `selection`).
# Measured on the 17 realAWSCloudwatch files: standard 69.89, reward_low_fp 65.44, reward_low_fn
# 73.26 (float32 TFLite: 72.78 / 67.86 / 76.30); leave-one-file-out (held-out) standard 67.86.
# The same model with its fixed threshold (max training score × 1.5): 58.15. int8 calibrated
# without the × 8 windows (representative_scale 1): 66.81.
DEFAULT_NAB_ADAPTATION = AdaptationSettings(
    threshold=True,
    threshold_quantile=0.95,
    threshold_factor=1.75,
    threshold_rate=0.001,
    threshold_min=0.01,
    threshold_max=100.0,
    holdoff_windows=0,
)
DEFAULT_COOLDOWN = 100
_NO_REALERT = 1 << 30  # one event per episode


@dataclass(frozen=True)
class NabSetting:
    """Everything that decides a NAB run; one setting for every file."""

    config: DetectorConfig = DEFAULT_NAB_CONFIG
    adaptation: AdaptationSettings = DEFAULT_NAB_ADAPTATION
    cooldown: int = DEFAULT_COOLDOWN

    def describe(self) -> dict[str, Any]:
        adaptation = {f: getattr(self.adaptation, f) for f in self.adaptation.__struct_fields__}
        return {
            "model": self.config.describe(),
            "adaptation": adaptation,
            "cooldown": self.cooldown,
        }


def detections_from_flags(flags: npt.NDArray[np.bool_], cooldown: int) -> npt.NDArray[np.bool_]:
    """The first flag of each episode, then nothing for ``cooldown`` readings."""
    out = np.zeros(len(flags), dtype=bool)
    quiet_until = -1
    previous = False
    for i, flag in enumerate(np.asarray(flags, dtype=bool)):
        if flag and not previous and i > quiet_until:
            out[i] = True
            quiet_until = i + cooldown
        previous = bool(flag)
    return out


def detections_from_events(events: list[int], rows: int, cooldown: int) -> npt.NDArray[np.bool_]:
    """One detection per device event, keeping at most one per ``cooldown`` rows."""
    out = np.zeros(rows, dtype=bool)
    quiet_until = -1
    for i in sorted(events):
        if i > quiet_until:
            out[i] = True
            quiet_until = i + cooldown
    return out


@dataclass(frozen=True)
class NabFileResult:
    name: str
    rows: int
    windows: int
    probation: int
    counts: dict[str, NabCounts]  # per profile, device path
    float_counts: dict[str, NabCounts]  # the same model in float32 TFLite
    detections: npt.NDArray[np.bool_]
    float_detections: npt.NDArray[np.bool_]
    device: Replay
    model_threshold: float
    series: NabSeries

    def summary(self) -> dict[str, Any]:
        std = self.counts["standard"]
        finite = self.device.thresholds[np.isfinite(self.device.thresholds)]
        return {
            "file": self.name,
            "rows": self.rows,
            "probationary_rows": self.probation,
            "windows": self.windows,
            "detections": int(self.detections[self.probation :].sum()),
            "true_positives": std.tp,
            "false_positives": std.fp,
            "missed_windows": std.fn,
            **{f"{name}_raw": round(c.raw, 3) for name, c in self.counts.items()},
            "float_standard_raw": round(self.float_counts["standard"].raw, 3),
            "model_threshold": self.model_threshold,
            "final_threshold": float(finite[-1]) if len(finite) else None,
        }


@dataclass(frozen=True)
class NabResult:
    setting: NabSetting
    files: list[NabFileResult]
    scores: dict[str, float]  # normalised, per profile (device path)
    float_scores: dict[str, float]
    seconds: float
    selection: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": "nab",
            **{name: round(v, 2) for name, v in self.scores.items()},
            "float": {name: round(v, 2) for name, v in self.float_scores.items()},
            "files": len(self.files),
            "windows": sum(f.windows for f in self.files),
            "quantization": self.setting.config.quantization.value,
            "detector": self.setting.describe(),
            "protocol": "NAB's rules: each file once, in order; the model is trained on the "
            "probationary period (min(15% of rows, 750), not scored) and the agent's detector, "
            "with adaptation, learns online from the windows it judges normal; a detection is "
            f"a device event (one per episode), at most one per {self.setting.cooldown} rows; "
            "NAB's scorer (sweeper.py) and normalisation",
            "selection": self.selection,
            "published_standard": NAB_PUBLISHED,
            "seconds": round(self.seconds, 1),
            "per_file": [f.summary() for f in self.files],
        }


def nab_scores(results: list[NabFileResult], *, reference: bool = False) -> dict[str, float]:
    """Normalised NAB score per profile over ``results``."""
    return {
        p.name: nab_normalised(
            [(r.float_counts if reference else r.counts)[p.name] for r in results]
        )
        for p in NAB_PROFILES
    }


def evaluate_nab(
    root: Path,
    setting: NabSetting | None = None,
    *,
    float_reference: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> NabResult:
    setting = setting or NabSetting()
    started = time.perf_counter()
    series = load_nab(root)
    results = []
    for i, s in enumerate(series):
        if progress:
            progress(i, len(series), s.name)
        results.append(evaluate_series(s, setting, float_reference=float_reference))
    if progress:
        progress(len(series), len(series), "done")
    return NabResult(
        setting=setting,
        files=results,
        scores=nab_scores(results),
        float_scores=nab_scores(results, reference=True),
        seconds=time.perf_counter() - started,
    )


def fit_series_model(
    s: NabSeries, config: DetectorConfig, quantization: Quantization | None = None
) -> Detector:
    """The model of one series, trained on its probationary period."""
    if quantization is not None:
        config = dataclasses.replace(config, quantization=quantization)
    return fit_detector(s.values.reshape(-1, 1)[: _train_rows(s, config)], config)


def evaluate_series(
    s: NabSeries,
    setting: NabSetting,
    *,
    float_reference: bool = True,
    model: Detector | None = None,
    runtime: Reconstructor | None = None,
) -> NabFileResult:
    """Train on the probationary period (or use ``model``), then stream the whole file through
    the device; ``runtime`` replaces the model's interpreter (e.g. a memo of its outputs)."""
    config = setting.config
    rows = len(s.values)
    model = model or fit_series_model(s, config)
    # The adaptive threshold warms up on the probationary windows (the protocol, not a tuning).
    adaptation = setting.adaptation
    if adaptation.threshold:
        warmup = max(1, _train_rows(s, config) - config.window + 1)
        adaptation = msgspec.structs.replace(adaptation, threshold_warmup_windows=warmup)
    device = _stream(s, model, adaptation, runtime)
    if float_reference:
        reference = _stream(s, fit_series_model(s, config, Quantization.FLOAT32), adaptation, None)
    else:
        reference = device
    detections = detections_from_events(device.events, rows, setting.cooldown)
    float_detections = detections_from_events(reference.events, rows, setting.cooldown)
    return NabFileResult(
        name=s.name,
        rows=rows,
        windows=len(s.windows),
        probation=probationary_rows(rows),
        counts={p.name: nab_file_score(s.timestamps, detections, s.windows, p)
                for p in NAB_PROFILES},
        float_counts={p.name: nab_file_score(s.timestamps, float_detections, s.windows, p)
                      for p in NAB_PROFILES},
        detections=detections,
        float_detections=float_detections,
        device=device,
        model_threshold=model.threshold,
        series=s,
    )


def _train_rows(s: NabSeries, config: DetectorConfig) -> int:
    return max(probationary_rows(len(s.values)), config.window + 2)


def _stream(
    s: NabSeries, model: Detector, adaptation: AdaptationSettings, runtime: Reconstructor | None
) -> Replay:
    detector = DeviceDetector(["value"], realert_windows=_NO_REALERT, adaptation=adaptation)
    detector.activate(device_model(model, ["value"], runtime=runtime))
    return replay(detector, s.timestamps, s.values)
