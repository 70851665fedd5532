"""Synthetic multichannel signals: a device profile driven by load changes, cycles and noise.

:class:`SignalGenerator` produces the readings of one device sample by sample, deterministic per
seed and independent of how the samples are requested (1,000 samples in one block or in ten
gives the same numbers). Hidden state: a load that jumps between levels at random times and
follows with a lag, a slower thermal load, a compressed day-like cycle, the working cycle whose
frequency depends on load, and slow wear. Numpy only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from simulator.faults import Fault, FaultApplier
from simulator.profiles import DeviceProfile, Latent, get_profile

__all__ = ["SignalBlock", "SignalGenerator", "reference_spread"]

Array = npt.NDArray[np.float64]

_GAINS = 8  # per-device gain factors a profile may use
_REFERENCE_SEED = 20_240_601


@dataclass(frozen=True)
class SignalBlock:
    """Consecutive samples of one device. ``kept`` is False where a dropout removed a reading."""

    ts: Array  # epoch seconds, one per row
    values: Array  # rows × channels
    kept: npt.NDArray[np.bool_]

    def delivered(self) -> tuple[Array, Array]:
        """The rows the device actually sends (dropped ones removed)."""
        return self.ts[self.kept], self.values[self.kept]


class SignalGenerator:
    """Readings of one simulated device at ``rate_hz``, starting at ``start_ts``."""

    def __init__(
        self,
        profile: DeviceProfile | str,
        *,
        seed: int = 0,
        rate_hz: float = 10.0,
        start_ts: float = 0.0,
        variation: float = 0.03,
        day_period_s: float | None = None,
        load_dwell_s: float | None = None,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        if not math.isfinite(rate_hz) or rate_hz <= 0 or rate_hz > 10_000:
            raise ValueError(f"rate_hz {rate_hz!r} must be in (0, 10000]")
        if not 0 <= variation < 0.5:
            raise ValueError(f"variation {variation!r} must be in [0, 0.5)")
        self.seed = seed
        self.rate_hz = float(rate_hz)
        self.start_ts = float(start_ts)
        self.day_period_s = float(day_period_s or self.profile.day_period_s)
        self.load_dwell_s = float(load_dwell_s or self.profile.load_dwell_s)
        gain_ss, load_ss, noise_ss, phase_ss = np.random.SeedSequence(seed).spawn(4)
        self._gains = 1.0 + variation * np.clip(
            np.random.default_rng(gain_ss).standard_normal(_GAINS), -2.5, 2.5
        )
        self._load_rng = np.random.default_rng(load_ss)
        self._noise_rng = np.random.default_rng(noise_ss)
        start_rng = np.random.default_rng(phase_ss)
        self._phase = float(start_rng.uniform(0, 2 * math.pi))
        self._day_offset = float(start_rng.uniform(0, self.day_period_s))
        self._target = float(self._load_rng.uniform(*self.profile.load_range))
        self._load = self._target
        self._slow_load = self._target
        self._next_switch = float(self._load_rng.exponential(self.load_dwell_s))
        self._n = 0  # samples generated so far
        self._applier: FaultApplier | None = None

    def snapshot(self) -> SignalGenerator:
        """A copy that goes on from this point as this one would: its own random generators,
        the profile and the fault applier shared (neither changes)."""
        twin = copy.copy(self)
        twin._load_rng = copy.deepcopy(self._load_rng)
        twin._noise_rng = copy.deepcopy(self._noise_rng)
        return twin

    @property
    def applier(self) -> FaultApplier:
        """Applies faults; built on first use (the reference spread is itself generated)."""
        if self._applier is None:
            self._applier = FaultApplier(
                channel_names=self.profile.channel_names,
                spread=reference_spread(self.profile.name),
                default_channels=self.profile.default_fault_channels,
            )
        return self._applier

    @property
    def channels(self) -> list[str]:
        return self.profile.channel_names

    @property
    def samples(self) -> int:
        """How many samples this generator has produced (dropped ones included)."""
        return self._n

    def ts_of(self, index: int) -> float:
        return self.start_ts + index / self.rate_hz

    @property
    def next_ts(self) -> float:
        return self.ts_of(self._n)

    def generate(self, n: int, faults: Sequence[Fault] = ()) -> SignalBlock:
        """The next ``n`` samples, with ``faults`` applied where they are active."""
        if n < 0:
            raise ValueError(f"cannot generate {n} samples")
        index = np.arange(self._n, self._n + n, dtype=np.float64)
        t = index / self.rate_hz
        ts = self.start_ts + t
        latent = self._advance(t, FaultApplier.cycle_factor(faults, ts))
        clean = self.profile.render(latent, self._gains)
        noisy = clean + self._noise_rng.standard_normal(clean.shape) * self.profile.noise
        values = self.applier.apply(faults, ts, noisy) if faults else noisy
        self._n += n
        return SignalBlock(ts=ts, values=values, kept=FaultApplier.kept(faults, ts))

    def _advance(self, t: Array, cycle_factor: Array) -> Latent:
        n = len(t)
        dt = 1.0 / self.rate_hz
        p = self.profile
        alpha = 1.0 - math.exp(-dt / p.load_tau_s)
        alpha_slow = 1.0 - math.exp(-dt / p.thermal_tau_s)
        load = np.empty(n)
        slow = np.empty(n)
        for i in range(n):
            while t[i] >= self._next_switch:
                self._target = float(self._load_rng.uniform(*p.load_range))
                self._next_switch += float(self._load_rng.exponential(self.load_dwell_s))
            self._load += alpha * (self._target - self._load)
            self._slow_load += alpha_slow * (self._load - self._slow_load)
            load[i] = self._load
            slow[i] = self._slow_load
        freq = (p.cycle_hz + p.cycle_hz_per_load * load) * cycle_factor
        phase = self._phase + np.cumsum(2.0 * math.pi * freq * dt)
        if n:
            self._phase = float(phase[-1] % (2.0 * math.pi))
        day = np.sin(2.0 * math.pi * (t + self._day_offset) / self.day_period_s)
        wear = np.minimum(1.0, p.wear_per_hour * t / 3600.0)
        return Latent(t=t, load=load, slow_load=slow, day=day, phase=phase, wear=wear)


@cache
def reference_spread(profile_name: str) -> Array:
    """Per-channel standard deviation of a profile's normal operation (fault amplitudes' unit).

    Measured once on a fixed-seed run long enough to see every load level and a whole day.
    """
    profile = get_profile(profile_name)
    rate = 4.0
    seconds = max(4 * profile.day_period_s, 40 * profile.load_dwell_s)
    gen = SignalGenerator(profile, seed=_REFERENCE_SEED, rate_hz=rate, variation=0.0)
    block = gen.generate(int(seconds * rate))
    spread: Array = np.maximum(block.values.std(axis=0), 1e-9)
    spread.setflags(write=False)
    return spread
