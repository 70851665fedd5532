"""Scoring detections: SKAB's pointwise F1 / FAR / MAR and the NAB score.

NAB is implemented here from the method's description (Lavin & Ahmad, 2015): inside a labelled
window only the earliest detection counts, worth ``A_TP · σ(y)`` where ``y`` runs from -1 at the
window's start to 0 at its end and ``σ(y) = 2 / (1 + e^{5y}) - 1``; a detection outside any
window costs ``A_FP · σ(y)`` with ``y`` its distance after the previous window's end in window
lengths (-1, the full cost, when no window precedes it); a window with no detection costs
``A_FN``. Detections in the probationary period (first 15% of a file) are not scored. The raw
sum is normalised so the null detector scores 0 and the perfect one (a detection at the start
of every window) scores 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "NAB_PROFILES",
    "NabCounts",
    "NabProfile",
    "PointwiseCounts",
    "nab_file_score",
    "nab_normalised",
    "pointwise_counts",
    "scaled_sigmoid",
]

PROBATIONARY_FRACTION = 0.15


@dataclass(frozen=True)
class PointwiseCounts:
    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: PointwiseCounts) -> PointwiseCounts:
        return PointwiseCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 0.0

    @property
    def far(self) -> float:
        """False alarm rate, % of normal rows flagged."""
        return 100.0 * self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    @property
    def mar(self) -> float:
        """Missed alarm rate, % of anomalous rows not flagged."""
        return 100.0 * self.fn / (self.fn + self.tp) if self.fn + self.tp else 0.0


def pointwise_counts(
    predicted: npt.NDArray[np.bool_], labels: npt.NDArray[np.integer]
) -> PointwiseCounts:
    p = np.asarray(predicted, dtype=bool)
    t = np.asarray(labels).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"{p.shape} predictions for {t.shape} labels")
    return PointwiseCounts(
        tp=int((p & t).sum()),
        fp=int((p & ~t).sum()),
        fn=int((~p & t).sum()),
        tn=int((~p & ~t).sum()),
    )


@dataclass(frozen=True)
class NabProfile:
    name: str
    tp: float
    fp: float
    fn: float


NAB_PROFILES = (
    NabProfile("standard", tp=1.0, fp=0.11, fn=1.0),
    NabProfile("reward_low_fp", tp=1.0, fp=0.22, fn=1.0),
    NabProfile("reward_low_fn", tp=1.0, fp=0.11, fn=2.0),
)


def scaled_sigmoid(y: float) -> float:
    if y > 3.0:  # far after a window: the full false-positive cost
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@dataclass(frozen=True)
class NabCounts:
    raw: float  # this file's score under one profile
    null: float  # what the null detector gets
    perfect: float  # what the perfect detector gets
    tp: int
    fp: int
    fn: int


def nab_file_score(
    timestamps: npt.NDArray[np.floating],
    detections: npt.NDArray[np.bool_],
    windows: list[tuple[float, float]],
    profile: NabProfile,
) -> NabCounts:
    """Score one file's detections (one bool per timestamp) under ``profile``."""
    ts = np.asarray(timestamps, dtype=np.float64)
    flags = np.asarray(detections, dtype=bool)
    if ts.shape != flags.shape:
        raise ValueError(f"{flags.shape} detections for {ts.shape} timestamps")
    probation_end = ts[min(int(PROBATIONARY_FRACTION * len(ts)), len(ts) - 1)]
    spans = sorted(windows)
    hit = [False] * len(spans)
    raw = 0.0
    tp = fp = 0
    for t in ts[flags]:
        if t < probation_end:
            continue
        inside = next((i for i, (a, b) in enumerate(spans) if a <= t <= b), None)
        if inside is not None:
            if not hit[inside]:  # detections come in time order: the first is the earliest
                a, b = spans[inside]
                length = max(b - a, 1e-9)
                raw += profile.tp * scaled_sigmoid(-(b - t) / length)
                hit[inside] = True
                tp += 1
            continue
        before = [s for s in spans if s[1] < t]
        if before:
            a, b = before[-1]
            raw += profile.fp * scaled_sigmoid((t - b) / max(b - a, 1e-9))
        else:
            raw -= profile.fp
        fp += 1
    fn = hit.count(False)
    raw -= profile.fn * fn
    return NabCounts(
        raw=raw,
        null=-profile.fn * len(spans),
        perfect=profile.tp * scaled_sigmoid(-1.0) * len(spans),
        tp=tp,
        fp=fp,
        fn=fn,
    )


def nab_normalised(counts: list[NabCounts]) -> float:
    """100 · (S - S_null) / (S_perfect - S_null) over every file."""
    raw = sum(c.raw for c in counts)
    null = sum(c.null for c in counts)
    perfect = sum(c.perfect for c in counts)
    if perfect == null:
        return 0.0
    return 100.0 * (raw - null) / (perfect - null)
