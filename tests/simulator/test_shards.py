"""A shard ticks each device when the device says it is due (or at once when its socket
delivered something), never on a fixed period for all, and writes what a device's tick queued
before going on to the next device. Driven round by round with a given clock, no thread; the
devices are small fakes of a paho client (the integration tests in test_scale_fleet.py run the
real one over TLS)."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from simulator.shards import Shard


class FakeClient:
    """What a shard calls on a paho client; ``queued`` bytes wait until ``loop_write``, which
    writes at most ``takes`` of them (None: all)."""

    def __init__(self, sock: socket.socket | None = None, takes: int | None = None) -> None:
        self.sock = sock
        self.takes = takes
        self.queued = 0
        self.written = 0
        self.writes = 0
        self.misc = 0

    def want_write(self) -> bool:
        return self.queued > 0

    def loop_write(self) -> int:
        self.writes += 1
        n = self.queued if self.takes is None else min(self.takes, self.queued)
        self.queued -= n
        self.written += n
        return 0

    def loop_read(self) -> int:
        return 0

    def loop_misc(self) -> int:
        self.misc += 1
        return 0

    def socket(self) -> socket.socket | None:
        return self.sock


class FakeDevice:
    """Due every ``period`` s from ``first``; a tick may send ``send`` bytes (paho queues them
    and asks its owner to watch for writability, as ShardWire does)."""

    def __init__(self, name: str, shard: Shard, *, first: float, period: float,
                 send: int = 0, client: FakeClient | None = None, fail: bool = False) -> None:
        self.device_id = name
        self.shard = shard
        self.client = client or FakeClient()
        self.next_at = first
        self.period = period
        self.send = send
        self.fail = fail
        self.ticked_at: list[float] = []
        self.written_after_tick: list[int] = []
        shard.devices.append(self)

    def tick(self, now: float) -> None:
        self.ticked_at.append(now)
        if now >= self.next_at:
            self.next_at = now + self.period
        if self.fail:
            raise RuntimeError("broken device")
        if self.send:
            self.client.queued += self.send
            self.shard.want_write(self, self.client.sock, True)  # type: ignore[arg-type]

    def next_due(self, now: float) -> float:
        return self.next_at


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _start(shard: Shard, now: float) -> None:
    for device in shard.devices:
        shard.schedule(device, now)


def test_a_device_is_ticked_when_it_is_due_and_not_between() -> None:
    shard = Shard("s")
    fast = FakeDevice("fast", shard, first=0.0, period=0.25)
    slow = FakeDevice("slow", shard, first=0.0, period=1.0)
    _start(shard, 0.0)
    for step in range(21):  # 0.0 .. 2.0 s in 0.1 s rounds
        shard.run_due(step / 10)
    assert fast.ticked_at == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8])
    assert slow.ticked_at == pytest.approx([0.0, 1.0, 2.0])
    assert shard.ticks == 10


def test_a_reading_due_between_rounds_is_handled_in_the_round_at_its_time() -> None:
    shard = Shard("s")
    device = FakeDevice("d", shard, first=0.0, period=1.0)
    _start(shard, 0.0)
    shard.run_due(0.0)
    shard.run_due(0.999)
    assert device.ticked_at == [0.0], "not before it is due"
    shard.run_due(1.0)
    assert device.ticked_at == [0.0, 1.0]


def test_a_device_that_heard_something_is_ticked_at_once_and_not_again_at_its_old_time(
) -> None:
    shard = Shard("s")
    device = FakeDevice("d", shard, first=0.0, period=1.0)
    _start(shard, 0.0)
    shard.run_due(0.0)
    shard.run_due(0.4, [device])  # its socket delivered a message
    assert device.ticked_at == [0.0, 0.4]
    shard.run_due(1.0)  # still due at 1.0 (its reading), once
    shard.run_due(1.05)
    assert device.ticked_at == [0.0, 0.4, 1.0]


def test_a_device_ticked_late_counts_its_lag_whether_it_was_due_or_heard_something() -> None:
    shard = Shard("s")
    device = FakeDevice("d", shard, first=1.0, period=1.0)
    other = FakeDevice("o", shard, first=1.0, period=1.0)
    shard.schedule(device, 1.0)
    shard.schedule(other, 1.0)
    shard.run_due(1.5, [device])  # both half a second late; one ticked because it heard
    assert device.ticked_at == [1.5] and other.ticked_at == [1.5]
    assert len(shard.lags) == 2 and all(lag == pytest.approx(0.5, abs=0.05)
                                        for lag in shard.lags)
    shard.run_due(2.2, [device])  # due at 2.5: heard early, not late
    assert len(shard.lags) == 2
    shard.reset_lag()
    assert len(shard.lags) == 0 and shard.max_lag_s == 0.0


def test_what_a_tick_sends_is_written_before_the_next_device_ticks_without_epoll(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    shard = Shard("s")
    sender = FakeDevice("sender", shard, first=0.0, period=1.0, send=100,
                        client=FakeClient(pair[0]))
    written_when_next_ticked: list[int] = []

    class Watcher(FakeDevice):
        def tick(self, now: float) -> None:
            written_when_next_ticked.append(sender.client.written)
            super().tick(now)

    Watcher("after", shard, first=0.0, period=1.0)
    shard.watch(sender, pair[0])  # type: ignore[arg-type]
    _start(shard, 0.0)
    shard.run_due(0.0)
    assert written_when_next_ticked == [100]
    assert sender.client.writes == 1
    key = shard.selector.get_key(pair[0])
    assert key.events == selectors.EVENT_READ, "all written: not watched for writability"


def test_what_the_socket_does_not_take_waits_for_writability_then_is_unwatched(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    shard = Shard("s")
    client = FakeClient(pair[0], takes=60)
    sender = FakeDevice("sender", shard, first=0.0, period=1.0, send=100, client=client)
    shard.watch(sender, pair[0])  # type: ignore[arg-type]
    _start(shard, 0.0)
    shard.run_due(0.0)
    assert client.queued == 40
    assert shard.selector.get_key(pair[0]).events == selectors.EVENT_READ | selectors.EVENT_WRITE
    client.loop_write()  # epoll said writable; paho wrote the rest and says so
    shard.want_write(sender, pair[0], False)  # type: ignore[arg-type]
    assert client.queued == 0
    assert shard.selector.get_key(pair[0]).events == selectors.EVENT_READ


def test_a_failing_device_does_not_stop_the_others_and_is_ticked_again() -> None:
    shard = Shard("s")
    broken = FakeDevice("broken", shard, first=0.0, period=0.5, fail=True)
    fine = FakeDevice("fine", shard, first=0.0, period=0.5)
    _start(shard, 0.0)
    for step in range(3):
        shard.run_due(step / 2)
    assert len(fine.ticked_at) == 3
    assert len(broken.ticked_at) == 3


def test_keepalives_run_once_a_second() -> None:
    shard = Shard("s")
    device: Any = FakeDevice("d", shard, first=0.0, period=10.0)
    _start(shard, 0.0)
    for step in range(31):
        shard.run_due(step / 10)
    assert device.client.misc == 4  # at 0, 1, 2 and 3 s


class StepDevice(FakeDevice):
    """A device with ``steps`` model-update steps to run, each when its shard's budget lets it
    (as a core asks its :class:`~edge_agent.models.updater.StepBudget`); the round of each."""

    def __init__(self, name: str, shard: Shard, steps: int) -> None:
        super().__init__(name, shard, first=100.0, period=100.0)
        self.steps = steps
        self.ran: list[float] = []

    def tick(self, now: float) -> None:
        super().tick(now)
        if self.steps and self.shard.budget.take_for(self):
            self.steps -= 1
            self.ran.append(now)


def test_round_budget_hands_turns_in_the_order_devices_were_refused() -> None:
    shard = Shard("s", update_steps_per_round=2)
    budget = shard.budget
    a, b, c, d, e = (FakeDevice(n, shard, first=0.0, period=1.0) for n in "abcde")
    assert budget.take_for(a) and budget.take_for(b)
    assert not budget.take_for(c) and not budget.take_for(d)
    assert not budget.take_for(c), "asking again keeps its place"
    budget.refill()
    assert not budget.take_for(e), "others were refused before it: it queues behind them"
    assert budget.next_turn() is c and budget.take_for(c)
    budget.end_turn()
    assert budget.next_turn() is d and budget.take_for(d)
    budget.end_turn()
    assert budget.next_turn() is None, "two steps a round"
    budget.refill()
    assert budget.next_turn() is e
    assert (budget.steps, list(budget.waiting)) == (4, [])


def test_a_round_runs_at_most_its_budget_of_update_steps_the_rest_in_later_rounds() -> None:
    shard = Shard("s", update_steps_per_round=2)
    devices = [StepDevice(f"d{i}", shard, steps=1) for i in range(5)]
    shard.run_due(0.5, devices)  # a rollout reaches every device in the same round
    assert sorted(t for d in devices for t in d.ran) == [0.5, 0.5], "the round's budget"
    assert len(shard.budget.waiting) == 3
    shard.run_due(0.51)  # no device is due and none heard anything: the waiting get turns
    shard.run_due(0.52)
    assert sorted(t for d in devices for t in d.ran) == [0.5, 0.5, 0.51, 0.51, 0.52]
    assert [d.ran for d in devices[2:]] == [[0.51], [0.51], [0.52]], "in the order they waited"
    assert not shard.budget.waiting


def test_no_budget_runs_every_step_at_once() -> None:
    shard = Shard("s")
    devices = [StepDevice(f"d{i}", shard, steps=1) for i in range(50)]
    shard.run_due(0.5, devices)
    assert [d.ran for d in devices] == [[0.5]] * 50
