"""NAB: per series, learn from the probationary period, then raise detections; NAB-scored.

The probationary period (first 15% of each file, which NAB does not score) is the detector's
training data. Scores go through the device path (TFLite on the agent's runtime) as in SKAB. A
detection is the first flagged reading of an episode; the detector then stays quiet for
``cooldown`` readings, as an agent's re-alert interval does, since every extra detection
outside a window costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from simulator.evaluate.datasets import NabSeries, load_nab
from simulator.evaluate.detector import DetectorConfig, Scores, fit_detector
from simulator.evaluate.metrics import (
    NAB_PROFILES,
    NabCounts,
    nab_file_score,
    nab_normalised,
    probationary_rows,
)

__all__ = ["NAB_PUBLISHED", "NabResult", "detections_from_flags", "evaluate_nab"]

# Published standard-profile scores over all 58 NAB files (../shared/data/README.md).
NAB_PUBLISHED = {"ARTime": 74.9, "HTM": 70.5, "CAD OSE": 69.9, "random": 11.0}

DEFAULT_NAB_CONFIG = DetectorConfig(
    family="pca", window=24, latent=4, smoothing=3, threshold_quantile=1.0, threshold_factor=1.5
)


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


@dataclass(frozen=True)
class NabFileResult:
    name: str
    rows: int
    windows: int
    counts: dict[str, NabCounts]  # per profile
    detections: npt.NDArray[np.bool_]
    float_detections: npt.NDArray[np.bool_]
    scores: Scores
    threshold: float
    series: NabSeries

    def summary(self) -> dict[str, Any]:
        std = self.counts["standard"]
        return {
            "file": self.name,
            "rows": self.rows,
            "windows": self.windows,
            "detections": int(self.detections.sum()),
            "true_positives": std.tp,
            "false_positives": std.fp,
            "missed_windows": std.fn,
            **{f"{name}_raw": round(c.raw, 3) for name, c in self.counts.items()},
        }


@dataclass(frozen=True)
class NabResult:
    config: DetectorConfig
    cooldown: int
    files: list[NabFileResult]
    scores: dict[str, float]  # normalised, per profile (device path)
    float_scores: dict[str, float]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": "nab",
            **{name: round(v, 2) for name, v in self.scores.items()},
            "float": {name: round(v, 2) for name, v in self.float_scores.items()},
            "files": len(self.files),
            "windows": sum(f.windows for f in self.files),
            "quantization": self.config.quantization.value,
            "detector": {**self.config.describe(), "cooldown": self.cooldown},
            "protocol": "train on the probationary period (min(15% of rows, 750) "
            "of each file), score the rest with NAB's profiles",
            "published_standard": NAB_PUBLISHED,
            "seconds": round(self.seconds, 1),
            "per_file": [f.summary() for f in self.files],
        }


def evaluate_nab(
    root: Path,
    config: DetectorConfig = DEFAULT_NAB_CONFIG,
    *,
    cooldown: int = 100,
    progress: Callable[[int, int, str], None] | None = None,
) -> NabResult:
    started = time.perf_counter()
    series = load_nab(root)
    results = []
    for i, s in enumerate(series):
        if progress:
            progress(i, len(series), s.name)
        results.append(_evaluate_series(s, config, cooldown))
    if progress:
        progress(len(series), len(series), "done")
    scores = {p.name: nab_normalised([r.counts[p.name] for r in results]) for p in NAB_PROFILES}
    float_scores = {
        p.name: nab_normalised(
            [
                nab_file_score(r.series.timestamps, r.float_detections, r.series.windows, p)
                for r in results
            ]
        )
        for p in NAB_PROFILES
    }
    return NabResult(
        config=config,
        cooldown=cooldown,
        files=results,
        scores=scores,
        float_scores=float_scores,
        seconds=time.perf_counter() - started,
    )


def _evaluate_series(s: NabSeries, config: DetectorConfig, cooldown: int) -> NabFileResult:
    values = s.values.reshape(-1, 1)
    train_rows = max(probationary_rows(len(values)), config.window + 2)
    detector = fit_detector(values[:train_rows], config)
    scores = detector.scores(values)
    flags = np.nan_to_num(scores.device, nan=-np.inf) > detector.threshold
    float_flags = np.nan_to_num(scores.reference, nan=-np.inf) > detector.float_threshold
    detections = detections_from_flags(flags, cooldown)
    float_detections = detections_from_flags(float_flags, cooldown)
    counts = {p.name: nab_file_score(s.timestamps, detections, s.windows, p) for p in NAB_PROFILES}
    return NabFileResult(
        name=s.name,
        rows=len(values),
        windows=len(s.windows),
        counts=counts,
        detections=detections,
        float_detections=float_detections,
        scores=scores,
        threshold=detector.threshold,
        series=s,
    )
