"""Scoring detections: SKAB's pointwise F1 / FAR / MAR and the NAB score.

The NAB score follows NAB's own scorer (numenta/NAB, ``nab/sweeper.py``, v1.1), in rows:

- The probationary period is the first ``min(floor(15% of rows), 750)`` rows (15% of 5,000):
  nothing in it is scored, neither detections nor the rows of a window that fall in it.
- In a window of rows ``L..R`` (``W = R-L+1`` rows) only the best detection counts, worth
  ``A_TP · σ(-(R-i+1)/W) / σ(-1)``: 1.0 at the window's first row, falling towards 0 at its
  last, where ``σ(y) = 2 / (1 + e^{5y}) - 1``.
- A detection outside every window costs ``A_FP · σ(|i-R'|/(W'-1))`` where ``R'`` and ``W'``
  are the last row and width of the window before it (σ(y) = -1 from y ≥ 3); with no window
  before it, the full ``-A_FP``.
- A window with no detection costs ``-A_FN``.
- Over a corpus the sum is normalised as NAB's runner does: ``100 · (S - S_null) /
  (S_perfect - S_null)``, where ``S_null`` is the null detector's sum (``-A_FN`` per window
  that reaches past the probationary period) and ``S_perfect = A_TP`` × every labelled window.
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
    "probationary_rows",
    "scaled_sigmoid",
    "window_rows",
]

PROBATIONARY_FRACTION = 0.15
PROBATIONARY_MAX_ROWS = 750  # NAB: 15% of 5,000 rows
_FULL_FP_POSITION = 3.0  # NAB: a false positive this far (or with no window before it) costs A_FP


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


def probationary_rows(rows: int) -> int:
    """Rows NAB leaves unscored at the start of a file of ``rows`` rows."""
    return min(math.floor(PROBATIONARY_FRACTION * rows), PROBATIONARY_MAX_ROWS)


def scaled_sigmoid(y: float) -> float:
    """NAB's weight of a detection at relative position ``y`` (-1: a window's start)."""
    if y >= _FULL_FP_POSITION:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


@dataclass(frozen=True)
class NabCounts:
    raw: float  # this file's score under one profile
    null: float  # what the null detector gets
    perfect: float  # what the perfect detector gets (A_TP per labelled window, as NAB counts)
    tp: int  # windows hit
    fp: int  # detections outside every window, after the probationary period
    fn: int  # scored windows missed


def window_rows(
    timestamps: npt.NDArray[np.floating], windows: list[tuple[float, float]]
) -> list[tuple[int, int]]:
    """Each window as its first and last row (rows with ``start <= ts <= end``), in time order."""
    ts = np.asarray(timestamps, dtype=np.float64)
    rows = []
    for a, b in sorted(windows):
        left = int(np.searchsorted(ts, a, side="left"))
        right = int(np.searchsorted(ts, b, side="right")) - 1
        if right < left:
            raise ValueError(f"window [{a}, {b}] holds no row of the file")
        rows.append((left, right))
    return rows


def nab_file_score(
    timestamps: npt.NDArray[np.floating],
    detections: npt.NDArray[np.bool_],
    windows: list[tuple[float, float]],
    profile: NabProfile,
) -> NabCounts:
    """Score one file's detections (one bool per row, rows in time order) under ``profile``."""
    ts = np.asarray(timestamps, dtype=np.float64)
    flags = np.asarray(detections, dtype=bool)
    if ts.shape != flags.shape:
        raise ValueError(f"{flags.shape} detections for {ts.shape} timestamps")
    probation = probationary_rows(len(ts))
    spans = window_rows(ts, windows)
    scored = [(left, right) for left, right in spans if right >= probation]
    best: dict[int, float] = {}
    fp_score = 0.0
    fp = 0
    for i in (int(k) for k in np.flatnonzero(flags)):
        if i < probation:
            continue
        inside = next((k for k, (left, right) in enumerate(scored) if left <= i <= right), None)
        if inside is not None:
            left, right = scored[inside]
            position = -(right - i + 1) / (right - left + 1)
            credit = profile.tp * scaled_sigmoid(position) / _MAX_TP
            best[inside] = max(best.get(inside, -math.inf), credit)
            continue
        before = [(left, right) for left, right in spans if right < i]
        if before:
            left, right = before[-1]
            width = right - left + 1
            # NAB divides by W-1; a one-row window (W-1 = 0) gets the full cost
            position = abs(i - right) / (width - 1) if width > 1 else _FULL_FP_POSITION
        else:
            position = _FULL_FP_POSITION
        fp_score += profile.fp * scaled_sigmoid(position)
        fp += 1
    fn = len(scored) - len(best)
    return NabCounts(
        raw=sum(best.values()) + fp_score - profile.fn * fn,
        null=-profile.fn * len(scored),
        perfect=profile.tp * len(spans),
        tp=len(best),
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
