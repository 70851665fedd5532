"""Sufficient statistics of a device's normal windows, for training on the hub without raw data.

With ``telemetry.upload = "summaries"`` a device sends no readings. It folds each normal window
(``window`` readings × its channels, flattened as the hub's PCA family flattens them) into a
count, a mean vector and a scatter matrix (the sum of outer products of the deviations), plus
count, mean and M2 of each channel's normal readings. From these the hub computes exactly what
central training computes from the readings: the z-score normalization and the principal
subspace of the normalised windows (:mod:`cloud_hub.training.federated`).

Windows that overlap a window the model flagged (and the ``window`` readings after it) are left
out. Statistics of fewer than ``min_windows`` windows are never sent: they would come close to
the readings themselves (the mean of one window *is* that window); the device keeps adding to
them until there are enough.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Annotated

import msgspec
import numpy as np
import numpy.typing as npt

from edge_agent.drift.sketch import Moments

__all__ = ["MAX_FEATURES", "FederatedSettings", "WindowScatter"]

MAX_FEATURES = 256  # window × channels: the scatter's upper triangle is then at most 263 KB


class FederatedSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[federated]`` in the agent's config: used when ``telemetry.upload = "summaries"``."""

    window: Annotated[int, msgspec.Meta(ge=2, le=MAX_FEATURES)] = 10
    stride: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    min_windows: Annotated[int, msgspec.Meta(ge=10)] = 200


class WindowScatter:
    """Count, mean and scatter of normal windows, and moments of normal readings."""

    _FOLD_EVERY = 64  # windows folded into the scatter at once (one matrix product)

    def __init__(self, settings: FederatedSettings, channels: int) -> None:
        if settings.window * channels > MAX_FEATURES:
            raise ValueError(f"federated.window {settings.window} × {channels} channels is "
                             f"{settings.window * channels} values a window; at most "
                             f"{MAX_FEATURES}")
        self.settings = settings
        self.channels = channels
        self.features = settings.window * channels
        self._recent: deque[tuple[float, npt.NDArray[np.float64]]] = deque(
            maxlen=settings.window)
        self._since_window = 0
        self._pending: list[npt.NDArray[np.float64]] = []
        self._suspect: deque[tuple[float, float]] = deque(maxlen=32)
        self._last_ts = -math.inf
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = np.zeros(self.features)
        self.scatter = np.zeros((self.features, self.features))
        self.readings = Moments(self.channels)
        self._pending = []

    def suspect(self, start: float, end: float) -> None:
        """Readings in [start, end] belong to a window the model flagged: keep them out."""
        self._suspect.append((start, end))

    def add(self, ts: float, values: Sequence[float]) -> None:
        if ts <= self._last_ts:  # out of order or repeated: a window must be contiguous
            self._recent.clear()
        self._last_ts = ts
        self._recent.append((ts, np.asarray(values, dtype=np.float64)))
        self._since_window += 1
        s = self.settings
        if len(self._recent) < s.window or self._since_window < s.stride:
            return
        self._since_window = 0
        first = self._recent[0][0]
        if any(a <= ts and b >= first for a, b in self._suspect):
            return
        window = np.stack([v for _, v in self._recent])
        self._pending.append(window.ravel())
        self.readings.add(window[-s.stride:] if s.stride < s.window else window)
        if len(self._pending) >= self._FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        x = np.stack(self._pending)
        self._pending = []
        mean = x.mean(axis=0)
        centred = x - mean
        scatter = centred.T @ centred
        total = self.n + len(x)
        delta = mean - self.mean
        self.scatter += scatter + np.outer(delta, delta) * (self.n * len(x) / total)
        self.mean += delta * (len(x) / total)
        self.n = total

    @property
    def windows(self) -> int:
        return self.n + len(self._pending)

    def ready(self) -> bool:
        return self.windows >= self.settings.min_windows

    def take(self) -> tuple[int, npt.NDArray[np.float64], npt.NDArray[np.float64], Moments]:
        """The statistics so far (count, mean, scatter, reading moments), then start again."""
        self._fold()
        out = (self.n, self.mean.copy(), self.scatter.copy(), self.readings)
        self.reset()
        return out
