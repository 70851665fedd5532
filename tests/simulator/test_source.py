"""The simulated source: real-time pacing, backlog, fault injection, ground truth, plugin."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import numpy as np
import pytest

from edge_agent.sources.base import SensorSource
from simulator.faults import FaultError
from simulator.source import SimulatedSource, SourceOptionsError, create_source


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_real_time_source_delivers_readings_whose_time_has_come() -> None:
    clock = FakeClock(1000.0)
    src = SimulatedSource(seed=1, rate_hz=10.0, clock=clock)
    first = src.read(timeout=0)
    assert [r.ts for r in first] == [1000.0]
    clock.now = 1000.45
    second = src.read(timeout=0)
    assert [r.ts for r in second] == pytest.approx([1000.1, 1000.2, 1000.3, 1000.4])
    assert all(len(r.values) == len(src.channels) == 8 for r in second)
    assert src.read(timeout=0) == []
    assert src.samples_generated == 5


def test_history_is_delivered_at_once_in_blocks() -> None:
    clock = FakeClock(5000.0)
    src = SimulatedSource(seed=1, rate_hz=10.0, history_s=60.0, max_block=250, clock=clock)
    sizes = []
    while batch := src.read(timeout=0):
        sizes.append(len(batch))
    assert sizes == [250, 250, 101]
    assert src.samples_generated == 601


def test_read_waits_for_the_next_reading_up_to_the_timeout() -> None:
    src = SimulatedSource(seed=1, rate_hz=50.0)
    src.read(timeout=0)
    got = []
    for _ in range(100):
        got = src.read(timeout=1.0)
        if got:
            break
    assert got, "a 50 Hz source delivered nothing within 100 reads of 1 s"


def test_injected_fault_changes_readings_and_is_recorded_as_ground_truth() -> None:
    clock = FakeClock(1000.0)
    clean = SimulatedSource(seed=3, rate_hz=10.0, device_id="d1", clock=clock)
    faulty = SimulatedSource(seed=3, rate_hz=10.0, device_id="d1", clock=clock)
    truth = faulty.inject("step", at=1002.0, duration=1.0, severity=2.0)
    assert (truth.device_id, truth.kind, truth.start, truth.end) == ("d1", "step", 1002.0, 1003.0)
    assert truth.channels == ("current",)
    clock.now = 1005.0
    a = clean.read(timeout=0)
    b = faulty.read(timeout=0)
    diff = np.array([np.subtract(x.values, y.values) for x, y in zip(a, b, strict=True)])
    ts = np.array([r.ts for r in a])
    inside = (ts >= 1002.0) & (ts < 1003.0)
    assert np.abs(diff[inside]).max() > 0
    assert np.abs(diff[~inside]).max() == 0
    assert faulty.ground_truth() == [truth]


def test_fault_in_the_past_is_refused() -> None:
    clock = FakeClock(1000.0)
    src = SimulatedSource(seed=1, clock=clock)
    clock.now = 1010.0
    src.read(timeout=0)
    with pytest.raises(FaultError, match="before the next reading"):
        src.inject("spike", at=1005.0)


def test_dropout_readings_are_not_delivered_nor_counted() -> None:
    clock = FakeClock(1000.0)
    src = SimulatedSource(seed=1, rate_hz=10.0, clock=clock)
    src.inject("dropout", at=1001.0, duration=1.0)
    clock.now = 1002.95
    readings = src.read(timeout=0)
    assert len(readings) == 30 - 10
    assert not any(1001.0 <= r.ts < 1002.0 for r in readings)
    assert src.samples_generated == 20


def test_pause_holds_readings_back_without_losing_them() -> None:
    clock = FakeClock(1000.0)
    src = SimulatedSource(seed=1, rate_hz=10.0, clock=clock)
    src.read(timeout=0)
    src.pause(2.0)
    clock.now = 1001.0
    assert src.read(timeout=0) == []
    clock.now = 1002.5
    assert len(src.read(timeout=0)) == 25


def test_closed_source_returns_nothing() -> None:
    src = SimulatedSource(seed=1)
    src.close()
    assert src.read(timeout=1.0) == []
    assert src.exhausted


def test_entry_point_builds_a_source_with_scheduled_faults() -> None:
    (ep,) = [e for e in entry_points(group="edgeloop.sources") if e.name == "simulated"]
    factory = ep.load()
    src = factory({"profile": "motor", "seed": 4, "rate_hz": 5.0, "device_id": "m1",
                   "faults": [{"kind": "noise", "at": 3.0, "duration": 2.0, "severity": 1.5}]})
    assert isinstance(src, SensorSource)
    assert isinstance(src, SimulatedSource)
    assert src.channels[0] == "current"
    (truth,) = src.ground_truth()
    assert truth.kind == "noise" and truth.end - truth.start == pytest.approx(2.0)
    assert truth.start == pytest.approx(src.next_ts + 3.0, abs=1.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"profil": "pump"}, "unknown option"),
        ({"profile": "boiler"}, "profile='boiler'"),
        ({"rate_hz": "fast"}, "rate_hz='fast'"),
        ({"rate_hz": 0.0}, "rate_hz"),
        ({"seed": True}, "seed=True"),
        ({"faults": [{"kind": "spike"}]}, r"faults\[0\]"),
        ({"faults": [{"kind": "melt", "at": 1}]}, r"faults\[0\].*'melt'"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, object], message: str) -> None:
    with pytest.raises(SourceOptionsError, match=message):
        create_source(options)


def _read_until(src: SimulatedSource, clock: FakeClock, end: float, step: float) -> list[Any]:
    got = []
    while clock.now < end:
        clock.now += step
        got.extend(src.read(timeout=0))
    return got


def test_readings_made_ahead_are_the_readings_made_one_by_one_faults_included() -> None:
    # A fleet device makes its readings a block at a time; a fault injected after a block was
    # made still lands on the readings from its start, and nothing is handed out early.
    clocks = FakeClock(2000.0), FakeClock(2000.0)
    plain = SimulatedSource(seed=5, rate_hz=10.0, device_id="d", clock=clocks[0])
    ahead = SimulatedSource(seed=5, rate_hz=10.0, device_id="d", clock=clocks[1], lookahead=16)
    runs: list[list[Any]] = []
    for src, clock in zip((plain, ahead), clocks, strict=True):
        got = _read_until(src, clock, 2001.03, 0.1)
        assert src.next_ts == pytest.approx(2001.2)
        src.inject("spike", at=2001.35, duration=0.3)
        src.inject("dropout", at=2001.75, duration=0.2)
        got += _read_until(src, clock, 2004.0, 0.07)
        runs.append(got)
        assert src.samples_generated == len(got)
    assert [r.ts for r in runs[1]] == [r.ts for r in runs[0]]
    assert np.allclose([r.values for r in runs[1]], [r.values for r in runs[0]], rtol=1e-9)
    assert all(r.ts <= 2004.0 + 1e-9 for r in runs[1]), "nothing handed out before its time"
    assert not any(2001.75 <= r.ts < 2001.95 for r in runs[1]), "the dropout made after the block"
