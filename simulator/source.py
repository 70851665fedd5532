"""The simulated sensor source the edge agent reads, with fault injection and ground truth.

``create_source(options)`` is registered as the ``simulated`` entry point of the
``edgeloop.sources`` group, so an agent config can say ``[source] type = "simulated"``. The
simulator also builds :class:`SimulatedSource` objects itself and hands them to
``Agent(config, source=...)``, keeping a reference to inject faults and read the ground truth.

In real time (the default) a reading becomes available when the wall clock passes its
timestamp; ``history_s`` starts the device that many seconds in the past, so its first reads
deliver the backlog at once (a device uploading what it recorded before it connected).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.sources.base import Reading, SensorSource, SourceError
from simulator.faults import DEFAULT_DURATION_S, Fault, FaultError, FaultKind, fault_from_dict
from simulator.profiles import PROFILES
from simulator.scoring import GroundTruth
from simulator.signals import SignalBlock, SignalGenerator

__all__ = ["SimulatedSource", "SourceOptionsError", "create_source"]

_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "profile": str,
    "seed": int,
    "rate_hz": (int, float),
    "device_id": str,
    "history_s": (int, float),
    "realtime": bool,
    "variation": (int, float),
    "day_period_s": (int, float),
    "load_dwell_s": (int, float),
    "max_block": int,
    "faults": list,
}


class SourceOptionsError(SourceError):
    """Options of the simulated source that cannot be used; the text names the option."""


class SimulatedSource(SensorSource):
    """One simulated device's sensors. Thread-safe: the agent reads while the simulator injects."""

    def __init__(
        self,
        *,
        profile: str = "pump",
        seed: int = 0,
        rate_hz: float = 10.0,
        device_id: str = "sim",
        history_s: float = 0.0,
        realtime: bool = True,
        variation: float = 0.03,
        day_period_s: float | None = None,
        load_dwell_s: float | None = None,
        max_block: int = 1000,
        clock: Callable[[], float] = time.time,
        lookahead: int = 0,
    ) -> None:
        if profile not in PROFILES:
            raise SourceOptionsError(
                f"source option profile={profile!r} is unknown; known: {sorted(PROFILES)}"
            )
        if not math.isfinite(history_s) or history_s < 0:
            raise SourceOptionsError(f"source option history_s={history_s!r} must be >= 0")
        if max_block < 1:
            raise SourceOptionsError(f"source option max_block={max_block!r} must be >= 1")
        self.device_id = device_id
        self.realtime = realtime
        self.max_block = max_block
        self._clock = clock
        try:
            self._gen = SignalGenerator(
                profile,
                seed=seed,
                rate_hz=rate_hz,
                start_ts=clock() - history_s,
                variation=variation,
                day_period_s=day_period_s,
                load_dwell_s=load_dwell_s,
            )
        except ValueError as exc:
            raise SourceOptionsError(f"source options: {exc}") from None
        self.channels = self._gen.channels
        self.rate_hz = self._gen.rate_hz
        self._faults: list[Fault] = []
        self._recalibrations: list[tuple[float, dict[int, float]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._delivered = 0
        self._paused_until = 0.0
        # Realtime readings made ``lookahead`` at a time and handed out when due: a reading
        # made alone costs as much numpy work as a block of dozens (a quarter of a fleet
        # device's tick, py-spy). A fault or recalibration scheduled later rewinds to the
        # generator as it was before the block (``_ahead_from``) and makes the rest again.
        self._lookahead = max(0, int(lookahead))
        self._ahead: tuple[Any, Any, Any] | None = None  # ts, values, kept of the block
        self._ahead_pos = 0  # readings of the block handed out
        self._ahead_from: SignalGenerator | None = None
        self._ahead_faults: list[Fault] = []

    # -- SensorSource ----------------------------------------------------------------------
    def read(self, timeout: float) -> list[Reading]:
        """Readings whose time has come, waiting up to ``timeout`` s for the next one."""
        if self._closed.is_set():
            return []
        batch = self._take()
        if batch or not self.realtime:
            return batch
        wait = min(max(timeout, 0.0), max(self._wait_for_next(), 0.0))
        if wait > 0 and self._closed.wait(wait):
            return []
        return self._take()

    def close(self) -> None:
        self._closed.set()

    @property
    def exhausted(self) -> bool:
        return self._closed.is_set()

    # -- simulator side --------------------------------------------------------------------

    @property
    def samples_generated(self) -> int:
        """Readings this device actually produced and handed to its agent (dropouts excluded)."""
        with self._lock:
            return self._delivered

    @property
    def next_ts(self) -> float:
        with self._lock:
            return self._next_ts()

    def inject(
        self,
        kind: FaultKind | str,
        *,
        at: float | None = None,
        delay_s: float = 0.0,
        duration: float | None = None,
        severity: float = 1.0,
        channels: tuple[str, ...] | list[str] = (),
    ) -> GroundTruth:
        """Schedule a fault starting at epoch ``at`` (default: now + ``delay_s``)."""
        try:
            fault_kind = FaultKind(kind)
        except ValueError:
            raise FaultError(
                f"fault kind {kind!r} is unknown; known: {[k.value for k in FaultKind]}"
            ) from None
        with self._lock:
            next_ts = self._next_ts()
            start = at if at is not None else max(self._clock(), next_ts) + delay_s
            if start < next_ts:
                raise FaultError(
                    f"fault start {start:.3f} on {self.device_id} is before the next reading "
                    f"({next_ts:.3f}): readings already produced cannot be changed"
                )
            fault = Fault(
                kind=fault_kind,
                start=start,
                duration=duration if duration is not None else DEFAULT_DURATION_S[fault_kind],
                severity=severity,
                channels=tuple(channels),
                seed=self._gen.seed * 1000 + len(self._faults),
            )
            self._gen.applier.check(fault)
            self._rewind()
            self._faults.append(fault)
        return self._truth(fault)

    def recalibrate(self, at: float, offsets: Mapping[str, float]) -> None:
        """From epoch ``at`` on, channels read ``offsets[channel]`` normal spreads higher (a
        sensor recalibrated, or swapped for one calibrated differently). A concept drift, not
        a fault: it has no ground-truth interval, and a model should learn it as normal."""
        index = {}
        for name, spreads in offsets.items():
            if name not in self.channels:
                raise SourceOptionsError(f"recalibration names channel {name!r}, which is not "
                                         f"one of {self.channels}")
            index[self.channels.index(name)] = float(spreads)
        with self._lock:
            if at < self._next_ts():
                raise FaultError(f"recalibration at {at:.3f} on {self.device_id} is before the "
                                 f"next reading ({self._next_ts():.3f})")
            self._recalibrations.append((at, index))

    def add_fault(self, fault: Fault) -> GroundTruth:
        return self.inject(
            fault.kind,
            at=fault.start,
            duration=fault.duration,
            severity=fault.severity,
            channels=fault.channels,
        )

    def ground_truth(self) -> list[GroundTruth]:
        with self._lock:
            return [self._truth(f) for f in self._faults]

    def reopen(self) -> int:
        """Power the device back on after :meth:`close`: readings of the time it was off are
        never produced (nor counted); returns how many were skipped."""
        with self._lock:
            self._rewind()
            skipped = max(0, self._due(self._clock()) - self._gen.samples) if self.realtime else 0
            if skipped:
                self._gen.generate(skipped)
            self._closed.clear()
        return skipped

    def pause(self, seconds: float) -> None:
        """Hold readings back for ``seconds`` (a slow or stalled device); none are lost."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    # -- internals -------------------------------------------------------------------------
    def _truth(self, fault: Fault) -> GroundTruth:
        return GroundTruth(
            device_id=self.device_id,
            kind=fault.kind.value,
            start=fault.start,
            end=fault.end,
            severity=fault.severity,
            channels=tuple(self.channels[i] for i in self._gen.applier.channels_of(fault)),
        )

    def _samples(self) -> int:
        """Readings made and handed out (those made ahead and not handed out are not)."""
        if self._ahead is None:
            return self._gen.samples
        return self._gen.samples - (len(self._ahead[0]) - self._ahead_pos)

    def _next_ts(self) -> float:
        return self._gen.ts_of(self._samples())

    def _generate(self, n: int) -> SignalBlock:
        first, last = self._gen.next_ts, self._gen.ts_of(self._gen.samples + n - 1)
        active = [f for f in self._faults if f.start <= last and f.end > first]
        self._ahead_faults = active
        return self._gen.generate(n, active)

    def _from_ahead(self, n: int) -> tuple[Any, Any]:
        """The next ``n`` readings (``n`` <= lookahead) from the block made ahead, making a
        new block when this one has fewer left."""
        if self._ahead is None or len(self._ahead[0]) - self._ahead_pos < n:
            self._rewind()
            self._ahead_from = self._gen.snapshot()
            block = self._generate(self._lookahead)
            self._ahead, self._ahead_pos = (block.ts, block.values, block.kept), 0
        ts, values, kept = self._ahead
        at = slice(self._ahead_pos, self._ahead_pos + n)
        self._ahead_pos += n
        return ts[at][kept[at]], values[at][kept[at]]

    def _rewind(self) -> None:
        """Forget the readings made ahead and not handed out: the generator goes back to
        where the handed-out ones end, as if it had made only those."""
        if self._ahead is None or self._ahead_from is None:
            return
        gen, used = self._ahead_from, self._ahead_pos
        if used:
            gen.generate(used, self._ahead_faults)
        self._gen, self._ahead, self._ahead_from, self._ahead_pos = gen, None, None, 0

    def _due(self, now: float) -> int:
        """How many samples (in total since start) have a timestamp at or before ``now``."""
        return int(math.floor((now - self._gen.start_ts) * self.rate_hz + 1e-9)) + 1

    def _wait_for_next(self) -> float:
        with self._lock:
            now = self._clock()
            return max(self._next_ts(), self._paused_until) - now

    def _take(self) -> list[Reading]:
        with self._lock:
            now = self._clock()
            if now < self._paused_until:
                return []
            if self.realtime:
                n = min(self._due(now) - self._samples(), self.max_block)
            else:
                n = self.max_block
            if n <= 0:
                return []
            if self.realtime and 0 < n <= self._lookahead:
                ts, values = self._from_ahead(n)
            else:
                self._rewind()
                block = self._generate(n)
                ts, values = block.delivered()
            for at, offsets in self._recalibrations:
                after = ts >= at
                if after.any():
                    spread = self._gen.applier.spread
                    values = values.copy()
                    for c, spreads in offsets.items():
                        values[after, c] += spreads * spread[c]
            self._delivered += len(ts)
        # tolist() makes the Python floats in one C call (a per-value float() was a tenth of a
        # fleet device's reading)
        return [Reading(ts=t, values=tuple(row))
                for t, row in zip(ts.tolist(), values.tolist(), strict=True)]


def create_source(options: Mapping[str, Any]) -> SimulatedSource:
    """Entry point ``simulated``: build a source from the agent config's ``[source] options``.

    ``faults`` is a list of tables ``{kind, at, duration?, severity?, channels?}`` where ``at`` is
    seconds after the source starts.
    """
    opts = dict(options)
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise SourceOptionsError(
            f"simulated source: unknown option(s) {unknown}; known: {sorted(_OPTIONS)}"
        )
    for key, expected in _OPTIONS.items():
        value = opts.get(key)
        # bool is an int to Python, never a number or a seed here.
        if key in opts and (
            not isinstance(value, expected) or isinstance(value, bool) != (expected is bool)
        ):
            names = expected if isinstance(expected, tuple) else (expected,)
            raise SourceOptionsError(
                f"simulated source: option {key}={value!r} has the wrong type; expected "
                + " or ".join(t.__name__ for t in names)
            )
    faults = opts.pop("faults", [])
    source = SimulatedSource(**opts)
    origin = source.next_ts + opts.get("history_s", 0.0)
    for i, entry in enumerate(faults):
        if not isinstance(entry, dict) or "at" not in entry:
            raise SourceOptionsError(f"simulated source: faults[{i}] needs a table with 'at'")
        try:
            source.add_fault(fault_from_dict(entry, start=origin + float(entry["at"])))
        except (FaultError, TypeError, ValueError) as exc:
            raise SourceOptionsError(f"simulated source: faults[{i}]: {exc}") from None
    return source
