"""The Page-Hinkley change detector, step for step as river's ``drift.PageHinkley`` (0.26).

river costs the agent about 93 MB of RSS when imported (scipy, narwhals and its own modules;
measured in the agent process, see ``bench/edge_daemon.py``), against a 50 MB bar for the whole
agent, so the detector is written here (a few floats of state) and tested against river's on the
same streams (``tests/edge_agent/test_drift_detector.py``).

The test: the values' running mean since the last reset is the reference; ``sum_up`` adds each
deviation above it less ``delta`` (with forgetting ``alpha``), ``sum_down`` each deviation plus
``delta``; a change is declared when ``sum_up`` rose more than ``threshold`` above its lowest
value (an increase) or ``sum_down`` fell more than ``threshold`` below its highest (a decrease),
once ``min_instances`` values were seen. After a detection the next value starts afresh.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["PageHinkley"]

Mode = Literal["up", "down", "both"]


class PageHinkley:
    def __init__(
        self,
        *,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: Mode = "both",
    ) -> None:
        if mode not in ("up", "down", "both"):
            raise ValueError(f"mode {mode!r} must be 'up', 'down' or 'both'")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold {threshold!r} must be > 0")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self.drift_detected = False
        self.detections = 0
        self._reset()

    def _reset(self) -> None:
        self.drift_detected = False
        self.n = 0
        self.mean = 0.0
        self._sum_up = 0.0
        self._sum_down = 0.0
        self._min_up = math.inf
        self._max_down = -1.0  # river's starting value, kept so decisions match exactly
        self.direction: Literal["up", "down"] | None = None

    def prime(self, n: int, mean: float) -> None:
        """Start as if ``n`` values of mean ``mean`` had been seen, with no change among them
        (an extension of ours, not in river). A monitor that has just measured its reference
        primes the test with it: otherwise the test's own mean starts from the first values
        after the reference, and a change that comes right after it is partly learned as the
        mean before its sums can grow."""
        self._reset()
        self.n = max(int(n), 0)
        self.mean = float(mean) if self.n else 0.0

    def update(self, x: float) -> bool:
        """Add one value; True when it completes a change (also in :attr:`drift_detected`)."""
        if self.drift_detected:
            self._reset()
        self.n += 1
        self.mean += (1.0 / self.n) * (x - self.mean)  # river's order of operations
        deviation = x - self.mean
        self._sum_up = self.alpha * self._sum_up + deviation - self.delta
        self._sum_down = self.alpha * self._sum_down + deviation + self.delta
        self._min_up = min(self._min_up, self._sum_up)
        self._max_down = max(self._max_down, self._sum_down)
        if self.n >= self.min_instances:
            up = self._sum_up - self._min_up > self.threshold
            down = self._max_down - self._sum_down > self.threshold
            if self.mode == "up":
                down = False
            elif self.mode == "down":
                up = False
            if up or down:
                self.drift_detected = True
                self.detections += 1
                self.direction = "up" if up else "down"
        return self.drift_detected

    @property
    def statistic(self) -> float:
        """How far the test is now (the larger side), in the units of ``threshold``."""
        up = self._sum_up - self._min_up if self.mode != "down" else 0.0
        down = self._max_down - self._sum_down if self.mode != "up" else 0.0
        return max(up, down, 0.0) if self.n else 0.0
