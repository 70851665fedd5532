"""Drift monitoring on the device: compact statistics of what the model sees, and change tests.

:class:`DriftMonitor` is fed the readings (:meth:`~DriftMonitor.observe`) and, through the
detector's observer hook, each scored window (:meth:`~DriftMonitor.window_scored`) and each
model change (:meth:`~DriftMonitor.model_changed`). It has no thread, clock or connection of its
own: device timestamps come with the inputs, and the caller decides when to take a summary
(:meth:`~DriftMonitor.take_summary`), which the agent sends as a ``drift`` message.

What it keeps, per summary period: each channel's moments and a binned quantile sketch, the
window scores' distribution, and how many windows the model flagged. What it tests: each
channel's mean and the windows' log score, averaged over blocks of ``block_s`` seconds of device
time (a block mean is far less noisy than a reading, and a short fault moves few blocks). The
first ``reference_blocks`` blocks after a model change are the reference; afterwards each block
mean, in spreads of the reference's block means and clipped to ``clip`` (so one wild block, a
fault, counts little), feeds a Page-Hinkley test (:mod:`.page_hinkley`; both directions for a
channel, upward for the score) primed with the reference (its running mean starts at the
reference's center, weighted as the reference's blocks, so a change right after the reference
is not taken for the normal level). A detection puts that signal in ``drift`` from then; it leaves
when its smoothed shift stays within ``clear_level`` spreads for ``clear_blocks`` blocks. The
reference's anomaly rate is the baseline the hub compares the current rate with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import numpy as np

from edge_agent.drift.federated import WindowScatter
from edge_agent.drift.page_hinkley import PageHinkley
from edge_agent.drift.sketch import BinnedSketch, Moments
from shared.messages import (
    DriftBrief,
    DriftChannel,
    DriftScores,
    DriftState,
    ModelRef,
    TrainingStats,
)
from shared.scatter import pack_upper

__all__ = ["SCORE", "DriftMonitor", "DriftSettings"]

SCORE = "score"  # the name of the window-score signal among the channels that drift
_EWMA = 0.3  # weight of the newest block in the smoothed shift that decides when drift ends
_CHUNK = 64  # readings folded into the period's statistics at once
_LOG_FLOOR = 1e-12


class DriftSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[drift]`` in the agent's config."""

    enabled: bool = True
    summary_interval_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 300.0
    block_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 10.0
    reference_blocks: Annotated[int, msgspec.Meta(ge=3, le=100_000)] = 30
    delta: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.5  # PH: shift ignored, in spreads
    threshold: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 25.0  # PH: lambda, in spreads
    clip: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 4.0
    clear_level: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 1.5
    clear_blocks: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 6


class _Signal:
    """One tested signal (a channel's block mean, or the block's mean log score)."""

    def __init__(self, name: str, settings: DriftSettings, mode: str) -> None:
        self.name = name
        self.settings = settings
        self.reference: list[float] = []
        self.center = 0.0
        self.spread = 1.0
        self.test = PageHinkley(min_instances=5, delta=settings.delta,
                                threshold=settings.threshold, alpha=1.0,
                                mode="up" if mode == "up" else "both")
        self.shift: float | None = None
        self.since: float | None = None
        self._calm = 0

    def block(self, value: float, at: float) -> bool:
        """A closed block's value; True when it starts a drift of this signal."""
        s = self.settings
        if len(self.reference) < s.reference_blocks:
            self.reference.append(value)
            if len(self.reference) == s.reference_blocks:
                self.center, self.spread = _reference(self.reference)
                self.test.prime(s.reference_blocks, 0.0)  # the reference is 0 in its spreads
            return False
        u = min(max((value - self.center) / self.spread, -s.clip), s.clip)
        self.shift = u if self.shift is None else self.shift + _EWMA * (u - self.shift)
        started = False
        if self.test.update(u) and self.since is None:
            self.since = at
            started = True
        if self.since is not None and not started:
            self._calm = self._calm + 1 if abs(self.shift) < s.clear_level else 0
            if self._calm >= s.clear_blocks:
                self.since, self._calm = None, 0
        return started


def _reference(values: list[float]) -> tuple[float, float]:
    """Center and spread of the reference's block values. The spread is inflated for their
    lag-1 autocorrelation rho (by sqrt((1 + rho) / (1 - rho)), rho within 0..0.9): neighbouring
    blocks of a slowly moving signal are alike, and the test's sums would otherwise grow as if
    a persistent change had begun."""
    x = np.asarray(values, dtype=np.float64)
    center = float(x.mean())
    deviations = x - center
    variance = float((deviations**2).mean())
    rho = float((deviations[1:] * deviations[:-1]).mean() / variance) if variance > 0 else 0.0
    rho = min(max(rho, 0.0), 0.9)
    spread = math.sqrt(variance * (1 + rho) / (1 - rho))
    return center, max(spread, 1e-6 * max(1.0, abs(center)))


class DriftMonitor:
    """Statistics and change tests over one device's readings and window scores."""

    start: float | None  # device time of the period's first and latest reading
    end: float | None

    def __init__(self, settings: DriftSettings, channels: Sequence[str],
                 training: WindowScatter | None = None) -> None:
        self.settings = settings
        self.channels = list(channels)
        self.training = training
        self.model: ModelRef | None = None
        self.detections = 0
        self._reset_reference()
        self._new_period()
        self._sketch_basis: tuple[np.ndarray, np.ndarray] | None = None

    # -- inputs ------------------------------------------------------------------------------
    def model_changed(self, model: ModelRef | None, threshold: float) -> None:
        """A new active model (or none): what is normal is learned again."""
        self.model = model
        self._reset_reference()

    def window_scored(self, *, ts: tuple[float, float], score: float, threshold: float,
                      anomalous: bool) -> None:
        """The active model scored the window spanning ``ts`` (device time)."""
        ts = (float(ts[0]), float(ts[1]))
        self._roll(ts[1])
        log_score = math.log(max(score, _LOG_FLOOR)) if math.isfinite(score) else None
        if log_score is not None:
            self._block_score += log_score
            self._block_windows += 1
            self._scores.append(score)
        self.windows += 1
        self.anomalies += int(anomalous)
        if self._in_reference:
            self.baseline_windows += 1
            self.baseline_anomalies += int(anomalous)
        if anomalous and self.training is not None:
            span = ts[1] - ts[0]
            self.training.suspect(ts[0], ts[1] + span)  # the window and its trailing edge

    def observe(self, ts: float, values: Sequence[float]) -> None:
        """One reading of every channel, at device time ``ts``."""
        ts = float(ts)
        self._roll(ts)
        row = np.asarray(values, dtype=np.float64)
        self._block_sum += row
        self._block_readings += 1
        self._rows.append(row)
        if self.start is None:
            self.start = ts
        self.end = ts
        if len(self._rows) >= _CHUNK:
            self._fold_rows()
        if self.training is not None:
            self.training.add(ts, values)

    # -- outputs -----------------------------------------------------------------------------
    @property
    def state(self) -> DriftState:
        if self._in_reference:
            return DriftState.WARMING
        return DriftState.DRIFT if self.drifting() else DriftState.STABLE

    def drifting(self) -> dict[str, float]:
        """Signals in drift, with the device time each one's drift was detected."""
        return {s.name: s.since for s in self._signals.values() if s.since is not None}

    def since(self) -> float | None:
        """When the current state began: the first drifting signal's detection, the end of the
        reference when stable, the model change while warming."""
        drifting = self.drifting()
        if drifting:
            return min(drifting.values())
        return self._stable_since if not self._in_reference else self._reference_started

    def brief(self) -> DriftBrief:
        return DriftBrief(state=self.state, since=self.since(),
                          channels=sorted(self.drifting(), key=self._order))

    def status(self) -> dict[str, Any]:
        """What ``edge-agent status`` shows."""
        rate = self.anomalies / self.windows if self.windows else None
        base = (self.baseline_anomalies / self.baseline_windows
                if self.baseline_windows else None)
        shifts = {s.name: round(s.shift, 3) for s in self._signals.values()
                  if s.shift is not None}
        out: dict[str, Any] = {**self.brief().to_dict(), "detections": self.detections,
                               "anomaly_rate": rate, "baseline_anomaly_rate": base,
                               "shift": shifts}
        if self.training is not None:
            out["training_windows"] = self.training.windows
        return out

    def take_summary(self) -> dict[str, Any] | None:
        """The fields of a ``DriftSummary`` for the period since the last one (None when
        nothing was read), then a new period begins."""
        self._fold_rows()
        if self.start is None or self.end is None:
            return None
        moments, sketch = self._moments, self._sketch
        q05, q50, q95 = (sketch.quantile(q) if sketch is not None else
                         np.full(len(self.channels), math.nan) for q in (0.05, 0.5, 0.95))
        std = np.sqrt(moments.variance)
        channels = []
        for i, name in enumerate(self.channels):
            signal = self._signals.get(name)
            channels.append(DriftChannel(
                name=name, count=moments.n, mean=_num(moments.mean[i]), std=_num(std[i]),
                min=_num(moments.min[i]), max=_num(moments.max[i]), q05=_num(q05[i]),
                q50=_num(q50[i]), q95=_num(q95[i]),
                shift=_num(signal.shift) if signal else None,
                drifting_since=signal.since if signal else None))
        fields: dict[str, Any] = {
            "start": self.start, "end": max(self.end, self.start), "model": self.model,
            "state": self.state, "since": self.since(),
            "drifting": sorted(self.drifting(), key=self._order),
            "detections": self._period_detections, "readings": moments.n,
            "windows": self.windows, "anomalies": self.anomalies,
            "baseline_windows": self.baseline_windows,
            "baseline_anomalies": self.baseline_anomalies,
            "channels": channels, "score": self._score_stats(),
            "training": self._training_stats(),
        }
        basis = (moments.mean, np.maximum(std, 1e-9)) if moments.n > 1 else None
        self._new_period()
        if basis is not None:
            self._sketch_basis = basis
        return fields

    # -- internals ---------------------------------------------------------------------------
    def _order(self, name: str) -> int:
        return self.channels.index(name) if name in self.channels else len(self.channels)

    def _reset_reference(self) -> None:
        s = self.settings
        self._signals = {name: _Signal(name, s, "both") for name in self.channels}
        self._signals[SCORE] = _Signal(SCORE, s, "up")
        self._blocks_seen = 0
        self._block_index: int | None = None
        self._origin: float | None = None
        self._block_sum = np.zeros(len(self.channels))
        self._block_readings = 0
        self._block_score = 0.0
        self._block_windows = 0
        self.baseline_windows = 0
        self.baseline_anomalies = 0
        self._reference_started: float | None = None
        self._stable_since: float | None = None

    @property
    def _in_reference(self) -> bool:
        return self._blocks_seen < self.settings.reference_blocks

    def _new_period(self) -> None:
        self.start = None
        self.end = None
        self._rows: list[np.ndarray] = []
        self._moments = Moments(len(self.channels))
        self._sketch: BinnedSketch | None = None
        self._scores: list[float] = []
        self._score_moments = Moments(1)
        self._score_sketch = BinnedSketch([0.0], [1.0], span=30.0, width=0.05)
        self.windows = 0
        self.anomalies = 0
        self._period_detections = 0

    def _roll(self, ts: float) -> None:
        """Close the current block when ``ts`` lies in a later one."""
        if self._origin is None:
            self._origin = ts
            self._block_index = 0
            self._reference_started = ts
            return
        index = int((ts - self._origin) // self.settings.block_s)
        if self._block_index is not None and index > self._block_index:
            self._close_block(self._origin + index * self.settings.block_s)
            self._block_index = index

    def _close_block(self, at: float) -> None:
        if self._block_readings == 0 and self._block_windows == 0:
            return
        was_reference = self._in_reference
        if self._block_readings:
            means = self._block_sum / self._block_readings
            for i, name in enumerate(self.channels):
                self._detected(self._signals[name].block(float(means[i]), at))
        if self._block_windows:
            self._detected(self._signals[SCORE].block(self._block_score / self._block_windows,
                                                      at))
        self._blocks_seen += 1
        if was_reference and not self._in_reference:
            self._stable_since = at
        if not was_reference and not self.drifting() and self._stable_since is None:
            self._stable_since = at
        if self.drifting():
            self._stable_since = None
        self._block_sum = np.zeros(len(self.channels))
        self._block_readings = 0
        self._block_score = 0.0
        self._block_windows = 0

    def _detected(self, started: bool) -> None:
        if started:
            self.detections += 1
            self._period_detections += 1

    def _fold_rows(self) -> None:
        if self._rows:
            rows = np.stack(self._rows)
            self._rows = []
            self._moments.add(rows)
            if self._sketch is None:
                center, scale = self._sketch_basis or (rows.mean(axis=0),
                                                       np.maximum(rows.std(axis=0), 1e-9))
                self._sketch = BinnedSketch(center, scale)
            self._sketch.add(rows)
        if self._scores:
            scores = np.asarray(self._scores)
            self._scores = []
            self._score_moments.add(scores)
            self._score_sketch.add(np.log(np.maximum(scores, _LOG_FLOOR)))

    def _score_stats(self) -> DriftScores | None:
        m = self._score_moments
        if m.n == 0:
            return None
        q = [math.exp(float(self._score_sketch.quantile(p)[0])) for p in (0.5, 0.95, 0.99)]
        signal = self._signals[SCORE]
        return DriftScores(count=m.n, mean=_num(m.mean[0]), q50=_num(q[0]), q95=_num(q[1]),
                           q99=_num(q[2]), max=_num(m.max[0]),
                           shift=_num(signal.shift) if signal.shift is not None else None)

    def _training_stats(self) -> TrainingStats | None:
        t = self.training
        if t is None or not t.ready():
            return None  # fewer windows than the privacy floor: keep adding to them
        n, mean, scatter, readings = t.take()
        return TrainingStats(
            window=t.settings.window, stride=t.settings.stride, channels=list(self.channels),
            windows=n, mean=[float(x) for x in mean], scatter=pack_upper(scatter),
            reading_count=readings.n, reading_mean=[float(x) for x in readings.mean],
            reading_m2=[max(0.0, float(x)) for x in readings.m2],
        )


def _num(x: float | np.floating[Any] | None) -> float | None:
    if x is None:
        return None
    value = float(x)
    return value if math.isfinite(value) else None
