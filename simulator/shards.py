"""Shard threads for fleet-scale mode: one thread drives many devices' sockets and work.

Each shard watches its devices' MQTT sockets with one ``epoll`` selector (paho is driven from
outside: ``loop_read`` / ``loop_write`` / ``loop_misc``) and ticks each device when it is due
(the device says when: its next reading, its core's timers) or at once when its socket delivered
something, instead of every device on a fixed period: a reading is handled when it is due, not up
to a period later, and a device with nothing due costs nothing. What paho queued for the socket
during a round is written at the end of that round, without waiting for the next ``epoll`` wake
and without registering for writability unless the socket could not take it all. Used by
:mod:`simulator.scale_fleet`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from array import array
from collections import deque
from typing import Any, Protocol

__all__ = ["Driven", "RoundBudget", "Shard"]

log = logging.getLogger(__name__)

_LAG_SAMPLES_MAX = 2_000_000  # 8 MB; a thousand devices' 60 s run ticks about 200,000 times


class Driven(Protocol):
    """What a shard needs from a device."""

    device_id: str
    client: Any  # a paho client driven from outside its own loop

    def tick(self, now: float) -> None: ...

    def next_due(self, now: float) -> float:
        """When (``time.monotonic()``) the device next has something to do."""
        ...


class RoundBudget:
    """How many model-update steps (a manifest's signature check, a model's staging: its bytes
    checked, its interpreter built) the devices of one shard may run in one round of its loop.

    A rollout reaches every device of a shard within a few milliseconds, and each one's steps
    would otherwise run in the same round: hundreds of signature checks and interpreter builds
    while no reading, message or send of any device is handled (a fleet worker's ticks were
    seconds late). A step refused waits in line; each round the shard gives the steps left in
    its budget to the devices waiting first (:meth:`Shard.run_due`), and a device whose step
    comes while others wait queues behind them. Each device still runs its own steps (its own
    signature check of its own manifest); the budget only says when. ``per_round`` 0: no
    bound."""

    def __init__(self, per_round: int) -> None:
        self.per_round = per_round
        self.remaining = per_round
        self.waiting: deque[Driven] = deque()
        self._queued: set[int] = set()
        self._granted: Driven | None = None
        self.steps = 0  # steps run
        self.refusals = 0  # steps put off to a later round

    def refill(self) -> None:
        self.remaining = self.per_round

    def take_for(self, device: Driven) -> bool:
        """Whether ``device`` may run an update step now; if not, it is in line for a turn."""
        if self.per_round <= 0:
            self.steps += 1
            return True
        if self._granted is device or (self.remaining > 0 and not self.waiting):
            self._granted = None
            self.remaining -= 1
            self.steps += 1
            return True
        self.refusals += 1
        if id(device) not in self._queued:
            self._queued.add(id(device))
            self.waiting.append(device)
        return False

    def next_turn(self) -> Driven | None:
        """The first device in line, if the round has a step left for it (taken out of line:
        its next :meth:`take_for` is granted)."""
        if self.remaining <= 0 or not self.waiting:
            return None
        device = self.waiting.popleft()
        self._queued.discard(id(device))
        self._granted = device
        return device

    def end_turn(self) -> None:
        self._granted = None


class Shard:
    """One thread driving many devices: epoll for their sockets, a due-time heap for their
    work. ``max_wait_s``: the longest the loop sleeps (``loop_misc`` and ``stop``)."""

    def __init__(self, name: str, max_wait_s: float = 0.1, update_steps_per_round: int = 0) -> None:
        self.name = name
        self.max_wait_s = max_wait_s
        self.budget = RoundBudget(update_steps_per_round)
        self.devices: list[Driven] = []
        self.selector = selectors.DefaultSelector()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ticks = 0  # device ticks
        self.max_lag_s = 0.0  # the latest a device was ticked after it was due
        # How late each due tick was, seconds (the first _LAG_SAMPLES_MAX since the last reset):
        # a fleet bench's tick-lag percentiles.
        self.lags: array[float] = array("f")
        self._due: list[tuple[float, int, Driven]] = []
        self._scheduled: dict[int, float] = {}  # id(device) -> its live entry's due time
        self._order = itertools.count()
        self._writes: list[Driven] = []  # paho queued something for their sockets
        self._writing: set[int] = set()  # sockets registered for writability
        self._next_misc = 0.0

    def watch(self, device: Driven, sock: socket.socket) -> None:
        try:
            self.selector.register(sock, selectors.EVENT_READ, device)
        except KeyError:
            self.selector.modify(sock, selectors.EVENT_READ, device)
        self._writing.discard(sock.fileno())

    def unwatch(self, sock: socket.socket) -> None:
        try:
            self._writing.discard(sock.fileno())
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def want_write(self, device: Driven, sock: socket.socket, on: bool) -> None:
        """paho has bytes for ``sock`` (``on``) or has written them all. Writing waits for
        :meth:`flush_writes`, which registers for writability only what the socket refused."""
        if on:
            self._writes.append(device)
            return
        try:
            fd = sock.fileno()
            if fd in self._writing:
                self._writing.discard(fd)
                self.selector.modify(sock, selectors.EVENT_READ, device)
        except (KeyError, ValueError, OSError):
            pass

    def flush_writes(self) -> None:
        """Write what paho queued this round; what the socket does not take waits for epoll."""
        while self._writes:
            writes, self._writes = self._writes, []
            for device in writes:
                client = device.client
                if not client.want_write():
                    continue
                client.loop_write()
                sock = client.socket()
                if client.want_write() and sock is not None:
                    try:
                        fd = sock.fileno()
                        if fd not in self._writing:
                            self.selector.modify(
                                sock, selectors.EVENT_READ | selectors.EVENT_WRITE, device)
                            self._writing.add(fd)
                    except (KeyError, ValueError, OSError):
                        pass

    def reset_lag(self) -> None:
        self.max_lag_s = 0.0
        self.lags = array("f")

    def _note_lag(self, lag: float) -> None:
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        if len(self.lags) < _LAG_SAMPLES_MAX:
            self.lags.append(lag)

    def schedule(self, device: Driven, at: float) -> None:
        """Tick ``device`` at ``at`` (``time.monotonic()``), or earlier if it is due sooner."""
        key = id(device)
        current = self._scheduled.get(key)
        if current is not None and current <= at:
            return
        self._scheduled[key] = at
        heapq.heappush(self._due, (at, next(self._order), device))

    def _tick(self, device: Driven, now: float) -> None:
        self._scheduled.pop(id(device), None)
        try:
            device.tick(now)
        except Exception:  # one device's failure must not stop the others
            log.exception("device %s: tick failed", device.device_id)
        self.ticks += 1
        self.flush_writes()  # what it sent goes out now, not after the rest of the round
        try:
            at = device.next_due(now)
        except Exception:
            log.exception("device %s: next_due failed", device.device_id)
            at = now + self.max_wait_s
        self.schedule(device, at)

    def _run(self) -> None:
        now = time.monotonic()
        for each in self.devices:
            self.schedule(each, now)
        self._next_misc = now + 1.0
        due = self._due
        while not self.stop_event.is_set():
            now = time.monotonic()
            timeout = self.max_wait_s if not due else min(self.max_wait_s,
                                                          max(0.0, due[0][0] - now))
            if self.budget.waiting:
                timeout = 0.0  # update steps wait for the next round's budget
            try:
                ready = self.selector.select(timeout) if self.selector.get_map() else []
            except OSError as exc:
                log.warning("shard %s: select failed: %s", self.name, exc)
                ready = []
            if not ready and timeout > 0 and not self.selector.get_map():
                self.stop_event.wait(timeout)
            heard: list[Driven] = []
            for key, mask in ready:
                device: Driven = key.data
                if mask & selectors.EVENT_READ:
                    heard.append(device)
                    device.client.loop_read()
                    # TLS: decrypted bytes can wait in the socket where epoll cannot see them
                    sock: Any = key.fileobj
                    while getattr(sock, "pending", None) is not None and sock.pending() > 0:
                        device.client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    device.client.loop_write()
            self.run_due(time.monotonic(), heard)

    def run_due(self, now: float, heard: list[Driven] | tuple[()] = ()) -> None:
        """One round after the sockets were read: tick the devices that received something and
        those due by ``now``, the update steps waiting for the round's budget, keepalives once a
        second, write what is queued."""
        started = time.monotonic()
        budget = self.budget
        budget.refill()
        # A message handled now is not a hop that waits for the device's next due time. A
        # device that was due already is late all the same: its lag counts (on a busy loop
        # most devices have heard something by the time they are due, a PUBACK, an ack).
        for device in heard:
            at = self._scheduled.get(id(device))
            if at is not None and at <= now:
                self._note_lag(now - at + time.monotonic() - started)
            self._tick(device, now)
        due = self._due
        while due and due[0][0] <= now:
            at, _, device = heapq.heappop(due)
            if self._scheduled.get(id(device)) != at:
                continue  # superseded by an earlier entry, or ticked since
            # late by the round's start, and by the ticks of this round before it
            self._note_lag(now - at + time.monotonic() - started)
            self._tick(device, now)
        while (turn := budget.next_turn()) is not None:
            self._tick(turn, now)
            budget.end_turn()
        if now >= self._next_misc:
            for device in self.devices:
                device.client.loop_misc()
            self._next_misc = now + 1.0
        self.flush_writes()
