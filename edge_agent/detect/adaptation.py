"""On-device adaptation: normalization and threshold that follow slow regime changes.

A model's normalization (per-channel center and spread) and threshold are fixed when it is
trained. Seasons, recalibrated sensors and new operating points move them slowly. When enabled,
:class:`Adaptation` lets them follow, under three guards so that a slow fault is not learned as
the new normal:

- it learns only from windows the detector judged normal, and not during a hold-off after an
  anomalous window (the trailing edge of a fault);
- its rate is bounded: an exponentially weighted mean whose weight is ``rate`` per reading, with
  each reading counted at most ``clip`` spreads from the current center, so a center moves at
  most ``rate × clip`` spreads per reading, whatever the data do; the spread and the threshold
  stay within fixed multiples of the model's own;
- the threshold is ``threshold_factor`` × a high quantile of normal windows' scores, read from
  a histogram of log scores in which a window weighs ``threshold_rate`` of the whole once there
  are more than 1/``threshold_rate`` of them (equal weights before), within
  ``threshold_min``..``threshold_max`` × the model's threshold, which holds until
  ``threshold_warmup_windows`` windows are learned. The quantile rises only when that share of
  recent normal windows scored above it.

A fault that grows faster than these rates is therefore caught and then frozen out; a regime
change slower than them is followed. ``max_freeze_windows`` > 0 accepts a lasting change: after
that many anomalous windows in a row, learning resumes (the event was raised; the detector then
re-baselines at the same bounded rate instead of alarming for ever).

Numpy and msgspec only: this runs inside the agent's memory budget.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from shared.manifest import Normalization
from shared.scoring import normalize

__all__ = [
    "Adaptation",
    "AdaptationSettings",
    "AdaptiveNormalization",
    "AdaptiveThreshold",
]

_MAX = 1.7976931348623157e308
_MIN_SPREAD = 1e-6

Rate = Annotated[float, msgspec.Meta(gt=0, le=0.5)]


class AdaptationSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[adaptation]`` in the agent's config; everything off by default."""

    normalization: bool = False  # follow each channel's center (and spread) on normal windows
    threshold: bool = False  # factor × a high quantile of normal windows' scores
    rate: Rate = 0.001  # weight of one reading in the running center
    clip: Annotated[float, msgspec.Meta(gt=0, le=100)] = 3.0  # spreads a reading counts at most
    # weight of one reading in the running spread (0: spread fixed); slower than the center's,
    # since a growing spread is what many faults (noise, wear) look like
    scale_rate: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.0
    scale_min: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5  # × the model's spread
    scale_max: Annotated[float, msgspec.Meta(ge=1, le=_MAX)] = 2.0
    threshold_quantile: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.99
    threshold_factor: Annotated[float, msgspec.Meta(gt=0, le=_MAX)] = 1.2
    threshold_warmup_windows: Annotated[int, msgspec.Meta(ge=1)] = 500  # model's threshold until
    threshold_rate: Rate = 0.001  # share of the score distribution one normal window weighs
    threshold_min: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0  # × the model's threshold
    threshold_max: Annotated[float, msgspec.Meta(ge=1, le=_MAX)] = 4.0
    holdoff_windows: Annotated[int, msgspec.Meta(ge=0)] = 50  # learn nothing after an anomaly
    max_freeze_windows: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: never learn while anomalous

    @property
    def enabled(self) -> bool:
        return self.normalization or self.threshold


class AdaptiveNormalization:
    """Per-channel center and spread as bounded-rate averages of normal readings."""

    def __init__(self, base: Normalization, settings: AdaptationSettings) -> None:
        self.base = base
        self.settings = settings
        self.center = np.asarray(base.center, dtype=np.float64).copy()
        base_scale = np.asarray(base.scale, dtype=np.float64)
        self.scale = base_scale.copy()
        self._variance = self.scale**2
        self._scale_lo = np.maximum(base_scale * settings.scale_min, _MIN_SPREAD)
        self._scale_hi = base_scale * settings.scale_max
        self.readings_learned = 0

    def learn(self, readings: npt.NDArray[np.floating]) -> None:
        """Fold normal readings (rows × the model's channels) into center and spread."""
        s = self.settings
        for row in np.asarray(readings, dtype=np.float64).reshape(-1, len(self.center)):
            limit = s.clip * self.scale
            deviation = np.clip(row - self.center, -limit, limit)
            self.center += s.rate * deviation
            if s.scale_rate > 0 and self.base.method == "zscore":
                self._variance += s.scale_rate * (deviation**2 - self._variance)
                self.scale = np.clip(np.sqrt(self._variance), self._scale_lo, self._scale_hi)
            self.readings_learned += 1

    def normalize(self, raw: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        center = self.center.astype(np.float32)
        scale = self.scale.astype(np.float32)
        return ((np.asarray(raw, dtype=np.float32) - center) / scale).astype(np.float32)

    def current(self) -> Normalization:
        return Normalization(
            method=self.base.method,
            center=[float(x) for x in self.center],
            scale=[float(x) for x in self.scale],
        )


class AdaptiveThreshold:
    """``factor`` × the ``quantile`` of normal windows' scores, from a decaying histogram.

    Scores are binned by log (``_BINS_PER_E`` bins per factor e, from e^-30 to e^15: any score
    of a normalised window). The n-th normal window weighs max(1/n, ``threshold_rate``) of the
    whole (older ones fade once n passes 1/rate), so a slowly rising score must fill that share
    of the distribution before the quantile follows it. The model's threshold stays in force
    over the first ``threshold_warmup_windows`` windows.
    """

    def __init__(self, base: float, settings: AdaptationSettings) -> None:
        if not (math.isfinite(base) and base > 0):
            raise ValueError(f"an adaptive threshold needs a positive base threshold, got {base}")
        self.base = base
        self.settings = settings
        self._mass = np.zeros(_BINS, dtype=np.float64)  # sums to 1 once anything is learned
        self._quantile: float | None = None
        self.windows_learned = 0

    @property
    def value(self) -> float:
        s = self.settings
        if self._quantile is None or self.windows_learned < s.threshold_warmup_windows:
            return self.base
        scaled = self._quantile * s.threshold_factor
        return min(max(scaled, self.base * s.threshold_min), self.base * s.threshold_max)

    @property
    def quantile(self) -> float | None:
        """The current quantile estimate of normal scores (None before anything is learned)."""
        return self._quantile

    def learn(self, score: float) -> None:
        """One normal window's score."""
        if not (math.isfinite(score) and score > 0):
            return
        self.windows_learned += 1
        weight = max(self.settings.threshold_rate, 1.0 / self.windows_learned)
        self._mass *= 1.0 - weight
        self._mass[_bin_of(score)] += weight
        self._quantile = self._read_quantile()

    def _read_quantile(self) -> float:
        cumulative = np.cumsum(self._mass)
        target = self.settings.threshold_quantile * cumulative[-1]
        b = min(int(np.searchsorted(cumulative, target)), _BINS - 1)
        below = cumulative[b - 1] if b else 0.0
        inside = (target - below) / self._mass[b] if self._mass[b] > 0 else 1.0
        return math.exp(_LOG_LOW + (b + min(max(inside, 0.0), 1.0)) / _BINS_PER_E)


_LOG_LOW, _LOG_HIGH = -30.0, 15.0
_BINS_PER_E = 20  # 5 % steps
_BINS = int((_LOG_HIGH - _LOG_LOW) * _BINS_PER_E)


def _bin_of(score: float) -> int:
    return min(max(int((math.log(score) - _LOG_LOW) * _BINS_PER_E), 0), _BINS - 1)


class Adaptation:
    """One active model's adaptive normalization and threshold, and the gate that feeds them."""

    def __init__(
        self, settings: AdaptationSettings, normalization: Normalization, threshold: float
    ) -> None:
        self.settings = settings
        self.normalization = (
            AdaptiveNormalization(normalization, settings) if settings.normalization else None
        )
        self._base_normalization = normalization
        self._threshold = (
            AdaptiveThreshold(threshold, settings)
            if settings.threshold and math.isfinite(threshold) and threshold > 0
            else None
        )
        self._anomalous_run = 0
        self._holdoff = 0
        self.windows_frozen = 0

    def normalize(self, raw: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """A raw window (window × the model's channels) in the current normalization."""
        if self.normalization is not None:
            return self.normalization.normalize(raw)
        return normalize(raw, self._base_normalization)

    def threshold(self, model_threshold: float) -> float:
        """The threshold in force: the adaptive one, or the model's when that is off."""
        if self._threshold is None:
            return model_threshold
        if model_threshold != self._threshold.base:  # calibrated since: restart from it
            self._threshold = AdaptiveThreshold(model_threshold, self.settings)
        return self._threshold.value

    def observe(
        self, score: float, anomalous: bool, new_readings: npt.NDArray[np.floating]
    ) -> bool:
        """After a scored window: learn from it if the gate allows; True when it learned."""
        s = self.settings
        if anomalous:
            self._anomalous_run += 1
            self._holdoff = s.holdoff_windows
            if not (s.max_freeze_windows and self._anomalous_run > s.max_freeze_windows):
                self.windows_frozen += 1
                return False
        else:
            self._anomalous_run = 0
            if self._holdoff > 0:
                self._holdoff -= 1
                self.windows_frozen += 1
                return False
        if self.normalization is not None:
            self.normalization.learn(new_readings)
        if self._threshold is not None and not anomalous:
            self._threshold.learn(score)
        return True

    def state(self) -> dict[str, Any]:
        """What the adaptation holds now (for status and drift summaries)."""
        out: dict[str, Any] = {"windows_frozen": self.windows_frozen}
        if self.normalization is not None:
            n = self.normalization
            base_center = np.asarray(n.base.center, dtype=np.float64)
            base_scale = np.asarray(n.base.scale, dtype=np.float64)
            out["normalization"] = {
                "center": [float(x) for x in n.center],
                "scale": [float(x) for x in n.scale],
                "center_shift_spreads": [float(x) for x in (n.center - base_center) / base_scale],
                "readings_learned": n.readings_learned,
            }
        if self._threshold is not None:
            out["threshold"] = {
                "value": self._threshold.value,
                "base": self._threshold.base,
                "quantile": self._threshold.quantile,
                "windows_learned": self._threshold.windows_learned,
            }
        return out
