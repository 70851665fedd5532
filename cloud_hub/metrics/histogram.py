"""A cumulative histogram of durations, as Prometheus reads one: fixed upper bounds, counts.

Observations go into the first bucket whose bound they do not exceed; the exposition
(:mod:`cloud_hub.metrics.exposition`) makes the counts cumulative. Not thread-safe: the owner
observes and snapshots under its own lock (ingest counts a commit under the lock that guards
its other counters).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMIT_BOUNDS_S", "Histogram", "HistogramSnapshot"]

# Storing a batch of up to a few thousand messages: ~50-300 ms at full speed, seconds when the
# database is slow or locked. The bounds cover both, so an alert can ask "how many commits took
# over a second".
COMMIT_BOUNDS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                      5.0, 10.0, 30.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    """``counts[i]``: observations in (bounds[i-1], bounds[i]]; the last one, above every
    bound (Prometheus' ``+Inf`` bucket holds ``count``)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float  # the sum of the observations

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        running, out = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class Histogram:
    def __init__(self, bounds: Sequence[float] = COMMIT_BOUNDS_S) -> None:
        ordered = tuple(float(b) for b in bounds)
        if not ordered or list(ordered) != sorted(set(ordered)):
            raise ValueError(f"histogram bounds must be increasing and distinct: {bounds!r}")
        self.bounds = ordered
        self._counts = [0] * (len(ordered) + 1)
        self._total = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._total += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self._counts), self._total)
