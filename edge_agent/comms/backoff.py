"""Exponential back-off with full jitter, so a fleet does not reconnect in the same second.

Delay for attempt n (0 = first retry after losing the link) is uniform in
``[0, min(maximum, initial * 2**n)]`` (the "full jitter" of the AWS architecture blog).
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    def __init__(
        self, initial: float, maximum: float, *, rng: random.Random | None = None
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"back-off needs 0 < initial <= maximum, got {initial}, {maximum}")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def window(self) -> float:
        """Upper bound of the next delay."""
        return float(min(self.maximum, self.initial * 2 ** min(self.attempt, 32)))

    def next_delay(self) -> float:
        delay = self._rng.uniform(0.0, self.window())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
