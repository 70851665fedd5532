"""Compact, mergeable statistics of a stream: running moments and a binned quantile sketch.

Numpy only, fixed size whatever the stream's length: this is what the agent keeps of what its
model sees, and what a drift summary reports (statistics, never readings).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["BinnedSketch", "Moments"]

Floats = npt.NDArray[np.float64]


class Moments:
    """Count, mean, sum of squared deviations (M2), min and max of ``k`` columns.

    Batches are folded in with Chan et al.'s pairwise update, so a moments object built from
    parts equals one built from the whole (up to rounding): the hub merges devices' moments
    the same way (:meth:`merge`).
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.n = 0
        self.mean = np.zeros(k)
        self.m2 = np.zeros(k)
        self.min = np.full(k, math.inf)
        self.max = np.full(k, -math.inf)

    def add(self, rows: npt.ArrayLike) -> None:
        """Fold in rows × k values."""
        x = np.asarray(rows, dtype=np.float64).reshape(-1, self.k)
        if len(x) == 0:
            return
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        self._combine(len(x), mean, m2)
        np.minimum(self.min, x.min(axis=0), out=self.min)
        np.maximum(self.max, x.max(axis=0), out=self.max)

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        self._combine(other.n, other.mean, other.m2)
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)

    def _combine(self, n: int, mean: Floats, m2: Floats) -> None:
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
        self.n = total

    @property
    def variance(self) -> Floats:
        """Population variance (zeros before anything was added)."""
        return self.m2 / self.n if self.n else np.zeros(self.k)


class BinnedSketch:
    """Quantiles of ``k`` columns from fixed bins of ``width`` units of each column's ``scale``
    around its ``center``, from ``-span`` to ``+span`` (values beyond count in the end bins).

    A quantile is interpolated within its bin and kept within the exact min and max seen, so
    its error is at most one bin (``width`` × scale) inside the span.
    """

    def __init__(self, center: npt.ArrayLike, scale: npt.ArrayLike, *, span: float = 8.0,
                 width: float = 0.25) -> None:
        self.center = np.asarray(center, dtype=np.float64).ravel()
        self.scale = np.maximum(np.asarray(scale, dtype=np.float64).ravel(), 1e-12)
        self.k = len(self.center)
        self.span, self.width = span, width
        self.bins = int(round(2 * span / width))
        self.counts = np.zeros((self.k, self.bins), dtype=np.int64)
        self.min = np.full(self.k, math.inf)
        self.max = np.full(self.k, -math.inf)

    @property
    def n(self) -> int:
        return int(self.counts[0].sum()) if self.k else 0

    def add(self, rows: npt.ArrayLike) -> None:
        x = np.asarray(rows, dtype=np.float64).reshape(-1, self.k)
        if len(x) == 0:
            return
        z = (x - self.center) / self.scale
        index = np.clip(((z + self.span) / self.width).astype(np.int64), 0, self.bins - 1)
        flat = (index + np.arange(self.k) * self.bins).ravel()
        self.counts += np.bincount(flat, minlength=self.k * self.bins).reshape(self.k, self.bins)
        np.minimum(self.min, x.min(axis=0), out=self.min)
        np.maximum(self.max, x.max(axis=0), out=self.max)

    def quantile(self, q: float) -> Floats:
        """The ``q`` quantile of each column (NaN for a column with nothing in it)."""
        out = np.full(self.k, math.nan)
        for c in range(self.k):
            counts = self.counts[c]
            total = int(counts.sum())
            if total == 0:
                continue
            cumulative = np.cumsum(counts)
            target = q * total
            b = int(np.searchsorted(cumulative, target, side="left"))
            b = min(b, self.bins - 1)
            below = cumulative[b - 1] if b else 0
            inside = (target - below) / counts[b] if counts[b] else 0.0
            z = -self.span + (b + min(max(inside, 0.0), 1.0)) * self.width
            value = self.center[c] + z * self.scale[c]
            out[c] = min(max(value, self.min[c]), self.max[c])
        return out
