"""The fault library: what can go wrong with a device, with its ground-truth interval.

A :class:`Fault` covers the readings whose timestamps fall in ``[start, end)``. Amplitudes are
expressed in units of the channel's normal spread (its standard deviation in normal operation,
see :func:`simulator.signals.reference_spread`) times ``severity``, so one severity means the same
thing on every channel and every profile. :class:`FaultApplier` applies a device's faults to a
block of generated samples; it keeps the little state some faults need (the value a stuck
sensor froze at, the random stream of a noise burst) so that results do not depend on how the
samples are split into blocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_DURATION_S",
    "Fault",
    "FaultApplier",
    "FaultError",
    "FaultKind",
    "fault_from_dict",
]

Array = npt.NDArray[np.float64]


class FaultError(ValueError):
    """A fault description that cannot be applied; the text names the field and the value."""


class FaultKind(StrEnum):
    SPIKE = "spike"  # short impulses on one channel
    DRIFT = "drift"  # an offset growing linearly over the interval
    STUCK = "stuck"  # the sensor keeps returning the value it had when the fault began
    NOISE = "noise"  # a burst of extra sensor noise
    DROPOUT = "dropout"  # readings missing: the device sends nothing for the interval
    STEP = "step"  # a sudden constant offset
    FREQUENCY = "frequency"  # the working cycle runs faster than it should
    MULTI = "multi"  # several channels move together in a way normal operation never does
    # a bearing wearing out: vibration grows with a defect harmonic, its temperature creeps up
    BEARING_WEAR = "bearing_wear"


DEFAULT_DURATION_S: dict[FaultKind, float] = {
    FaultKind.SPIKE: 0.4,
    FaultKind.DRIFT: 10.0,
    FaultKind.STUCK: 8.0,
    FaultKind.NOISE: 6.0,
    FaultKind.DROPOUT: 5.0,
    FaultKind.STEP: 6.0,
    FaultKind.FREQUENCY: 8.0,
    FaultKind.MULTI: 6.0,
    FaultKind.BEARING_WEAR: 60.0,
}

# Amplitude at severity 1, in units of the channel's normal spread.
_SPIKE_SPREADS = 6.0
_DRIFT_SPREADS = 8.0  # reached at the end of the interval
_STUCK_OFFSET_SPREADS = 2.0  # per unit of severity above 1
_NOISE_SPREADS = 1.5
_STEP_SPREADS = 3.0
_MULTI_SPREADS = 2.0
_FREQUENCY_GAIN = 0.6  # the cycle runs (1 + 0.6 × severity) times faster
# Bearing wear grows linearly from nothing to severity over the interval. At full wear a vibration
# channel gains 4 spreads, modulated ±60 % at the defect frequency; a temperature channel 3.
_WEAR_VIBRATION_SPREADS = 4.0
_WEAR_TEMPERATURE_SPREADS = 3.0
_WEAR_DEFECT_HZ = 2.9  # outer-race defect frequency: no normal cycle runs this fast
_WEAR_MODULATION = 0.6


@dataclass(frozen=True)
class Fault:
    """One injected fault on one device; ``[start, end)`` is its ground truth."""

    kind: FaultKind
    start: float  # epoch seconds of the first affected reading
    duration: float
    severity: float = 1.0
    channels: tuple[str, ...] = ()  # empty: the profile's default channels for this kind
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            FaultKind(self.kind)
        except ValueError:
            raise FaultError(
                f"fault kind {self.kind!r} is unknown; known: {[k.value for k in FaultKind]}"
            ) from None
        if not math.isfinite(self.start) or self.start < 0:
            raise FaultError(f"fault start {self.start!r} must be a finite epoch time")
        if not math.isfinite(self.duration) or self.duration <= 0:
            raise FaultError(f"fault duration {self.duration!r} must be > 0 seconds")
        if not math.isfinite(self.severity) or self.severity <= 0:
            raise FaultError(f"fault severity {self.severity!r} must be > 0")

    @property
    def end(self) -> float:
        return self.start + self.duration

    def active(self, ts: Array) -> npt.NDArray[np.bool_]:
        return (ts >= self.start) & (ts < self.end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "start": self.start,
            "end": self.end,
            "duration": self.duration,
            "severity": self.severity,
            "channels": list(self.channels),
        }


def fault_from_dict(data: dict[str, Any], *, start: float, seed: int = 0) -> Fault:
    """Build a fault from a scenario entry (``kind``, ``duration``, ``severity``, ``channels``)."""
    unknown = set(data) - {"kind", "duration", "severity", "channels", "at", "device", "devices"}
    if unknown:
        raise FaultError(f"fault entry has unknown field(s) {sorted(unknown)}")
    if "kind" not in data:
        raise FaultError(f"fault entry {data!r} has no 'kind'")
    try:
        kind = FaultKind(data["kind"])
    except ValueError:
        raise FaultError(
            f"fault kind {data['kind']!r} is unknown; known: {[k.value for k in FaultKind]}"
        ) from None
    channels = data.get("channels", ())
    if isinstance(channels, str) or not all(isinstance(c, str) for c in channels):
        raise FaultError(f"fault channels {channels!r} must be a list of channel names")
    return Fault(
        kind=kind,
        start=start,
        duration=float(data.get("duration", DEFAULT_DURATION_S[kind])),
        severity=float(data.get("severity", 1.0)),
        channels=tuple(channels),
        seed=seed,
    )


@dataclass
class _StuckState:
    frozen: Array | None = None


@dataclass
class FaultApplier:
    """Applies one device's faults to generated blocks; holds their state between blocks."""

    channel_names: Sequence[str]
    spread: Array  # per-channel normal spread, same order as channel_names
    default_channels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _stuck: dict[Fault, _StuckState] = field(default_factory=dict)
    _rngs: dict[Fault, np.random.Generator] = field(default_factory=dict)

    def channels_of(self, fault: Fault) -> list[int]:
        names = fault.channels or self.default_channels.get(fault.kind.value, ())
        if not names and fault.kind not in (FaultKind.DROPOUT, FaultKind.FREQUENCY):
            names = (self.channel_names[0],)
        index = []
        for name in names:
            if name not in self.channel_names:
                raise FaultError(
                    f"fault {fault.kind.value} names channel {name!r}, "
                    f"which is not one of {list(self.channel_names)}"
                )
            index.append(list(self.channel_names).index(name))
        return index

    def check(self, fault: Fault) -> None:
        """Raise :class:`FaultError` now rather than when the fault's samples are generated."""
        self.channels_of(fault)

    @staticmethod
    def cycle_factor(faults: Iterable[Fault], ts: Array) -> Array:
        """Multiplier of the working-cycle frequency at each sample (frequency-shift faults)."""
        factor = np.ones_like(ts)
        for f in faults:
            if f.kind is FaultKind.FREQUENCY:
                factor[f.active(ts)] *= 1.0 + _FREQUENCY_GAIN * f.severity
        return factor

    @staticmethod
    def kept(faults: Iterable[Fault], ts: Array) -> npt.NDArray[np.bool_]:
        """Which samples the device actually delivers (dropouts remove the others)."""
        keep = np.ones(ts.shape, dtype=bool)
        for f in faults:
            if f.kind is FaultKind.DROPOUT:
                keep &= ~f.active(ts)
        return keep

    def apply(self, faults: Iterable[Fault], ts: Array, values: Array) -> Array:
        """Return ``values`` (rows × channels) with every value fault active at ``ts`` applied."""
        out = values.copy()
        for f in faults:
            mask = f.active(ts)
            if f.kind in (FaultKind.DROPOUT, FaultKind.FREQUENCY):
                continue
            if f.kind is FaultKind.STUCK:
                self._apply_stuck(f, mask, out)
                continue
            if not mask.any():
                continue
            for k, c in enumerate(self.channels_of(f)):
                out[mask, c] += self._offset(f, k, ts[mask], self.spread[c])
        return out

    def _offset(self, f: Fault, k: int, ts: Array, spread: float) -> Array:
        amp = spread * f.severity
        if f.kind is FaultKind.SPIKE:
            sign = 1.0 if (f.seed + k) % 2 == 0 else -1.0
            return np.full(ts.shape, sign * _SPIKE_SPREADS * amp)
        if f.kind is FaultKind.DRIFT:
            return _DRIFT_SPREADS * amp * (ts - f.start) / f.duration
        if f.kind is FaultKind.NOISE:
            rng = self._rngs.setdefault(f, np.random.default_rng([f.seed, 7]))
            return rng.standard_normal(ts.shape) * _NOISE_SPREADS * amp
        if f.kind is FaultKind.STEP:
            return np.full(ts.shape, _STEP_SPREADS * amp)
        if f.kind is FaultKind.MULTI:
            sign = -1.0 if k % 2 == 0 else 1.0
            return np.full(ts.shape, sign * _MULTI_SPREADS * amp)
        if f.kind is FaultKind.BEARING_WEAR:
            wear = amp * (ts - f.start) / f.duration
            name = self.channel_names[self.channels_of(f)[k]]
            if "temp" in name:  # a temperature channel: heat, no vibration
                return _WEAR_TEMPERATURE_SPREADS * wear
            # vibration, and a current or speed reading too (motor current signature analysis
            # finds bearing defect frequencies there)
            defect = np.sin(2.0 * math.pi * _WEAR_DEFECT_HZ * (ts - f.start))
            return _WEAR_VIBRATION_SPREADS * wear * (1.0 + _WEAR_MODULATION * defect)
        raise FaultError(f"fault kind {f.kind!r} has no value offset")

    def _apply_stuck(self, f: Fault, mask: npt.NDArray[np.bool_], out: Array) -> None:
        state = self._stuck.setdefault(f, _StuckState())
        if not mask.any():
            return
        cols = self.channels_of(f)
        if state.frozen is None:
            first = int(np.argmax(mask))
            offset = _STUCK_OFFSET_SPREADS * (f.severity - 1.0) * self.spread[cols]
            state.frozen = out[first, cols] + np.maximum(offset, 0.0)
        out[np.ix_(mask, np.asarray(cols, dtype=np.intp))] = state.frozen
