"""Choose the anomaly threshold from validation scores.

The device flags a window when its (smoothed) score is strictly greater than the threshold.
``quantile``: a high quantile of scores on normal validation windows. ``f1``: the threshold that
maximises F1 on labelled validation windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_hub.training.errors import TrainingError

__all__ = ["ThresholdChoice", "f1_optimal_threshold", "is_anomaly", "quantile_threshold"]


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    method: str  # human-readable: how it was chosen, from how many scores
    f1: float | None = None  # on the validation windows, when labels were used


def is_anomaly(scores: npt.NDArray[np.floating], threshold: float) -> npt.NDArray[np.bool_]:
    """The device's decision rule."""
    return np.asarray(scores) > threshold


def quantile_threshold(
    scores: npt.NDArray[np.floating], quantile: float, factor: float = 1.0
) -> ThresholdChoice:
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        raise TrainingError("no normal validation windows to take a threshold quantile from")
    value = float(np.quantile(s, quantile)) * factor
    return ThresholdChoice(
        threshold=value,
        method=f"quantile {quantile:g} of {len(s):,} validation scores × {factor:g}",
    )


def f1_optimal_threshold(
    scores: npt.NDArray[np.floating], labels: npt.NDArray[np.integer], factor: float = 1.0
) -> ThresholdChoice:
    """The cut between two consecutive sorted scores that maximises F1 (window labels 0/1)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if len(s) != len(y):
        raise TrainingError(f"{len(s)} validation scores but {len(y)} labels")
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise TrainingError(
            f"threshold_method 'f1' needs labelled validation windows of both classes; got "
            f"{positives} anomalous of {len(y)}"
        )
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Flag the top k windows for every k at which the score changes (ties flag together).
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(y_sorted)[last_of_tie]
    flagged = (np.arange(1, len(s) + 1))[last_of_tie]
    f1 = 2 * tp / (flagged + positives)
    best = int(np.argmax(f1))
    k = int(flagged[best])
    lowest_flagged = s_sorted[k - 1]
    below = s_sorted[k] if k < len(s) else lowest_flagged - max(abs(lowest_flagged), 1.0)
    value = float((lowest_flagged + below) / 2.0) * factor
    return ThresholdChoice(
        threshold=value,
        method=(
            f"F1-optimal on {len(s):,} labelled validation windows ({positives:,} anomalous, "
            f"F1 {float(f1[best]):.3f}) × {factor:g}"
        ),
        f1=float(f1[best]),
    )
