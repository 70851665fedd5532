"""Moves messages from the outbox to the MQTT link within a bounded in-flight window.

One thread reads the link's control queue: a PUBACK deletes its message from the outbox, a
connect or disconnect hands everything unacknowledged out again in order, a :class:`Wake` says
new messages are waiting. Only ``max_inflight`` messages are ever handed to paho at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol

from edge_agent.comms.mqtt import Acked, Connected, Disconnected, LinkEvent, Wake
from edge_agent.telemetry.outbox import Outbox, OutboxEntry, Stream

__all__ = ["Publisher", "Sender"]

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the sender needs from a link (``MqttLink`` is one)."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None: ...


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        link: Publisher,
        control: queue.Queue[LinkEvent],
        *,
        max_inflight: int = 100,
        name: str = "sender",
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.control = control
        self.max_inflight = max_inflight
        self.sent = 0
        self.acked: dict[Stream, int] = {Stream.TELEMETRY: 0, Stream.ANOMALIES: 0}
        self.acked_readings = 0
        self.refused = 0
        self._inflight: dict[int, OutboxEntry] = {}  # mid -> entry
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._name = name
        self._last_refusal: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self.control.put(Wake())

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged) or ``timeout`` passes."""
        self.wake()
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.outbox.depth() > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, 0.2))
        return True

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = [self.control.get(timeout=0.5)]
            except queue.Empty:
                events = []
            while True:
                try:
                    events.append(self.control.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle(events)
                self._fill_window()
            except Exception:  # the outbox keeps everything; log and go on
                log.exception("sender %s: unexpected error, retrying", self._name)
                self._stop.wait(0.5)

    def _handle(self, events: list[LinkEvent]) -> None:
        done: list[OutboxEntry] = []
        for event in events:
            if isinstance(event, Acked):
                entry = self._inflight.pop(event.mid, None)
                if entry is None:
                    continue
                if event.ok:
                    done.append(entry)
                else:
                    self.refused += 1
                    if event.reason != self._last_refusal:
                        log.error("broker refused %s seq %d on %s: %s (kept; resent after "
                                  "reconnect)", entry.stream.value, entry.seq, entry.topic,
                                  event.reason)
                        self._last_refusal = event.reason
            elif isinstance(event, Connected | Disconnected):
                self._inflight.clear()
                self.outbox.requeue_inflight()
        if done:
            self.outbox.ack(entry.id for entry in done)
            for entry in done:
                self.acked[entry.stream] += 1
                if entry.stream is Stream.TELEMETRY:
                    self.acked_readings += entry.readings
            with self._progress:
                self._progress.notify_all()

    def _fill_window(self) -> None:
        if not self.link.connected:
            return
        free = self.max_inflight - len(self._inflight)
        if free <= 0:
            return
        for entry in self.outbox.take(free):
            mid = self.link.publish(entry.topic, entry.payload, qos=1)
            if mid is None:  # the link dropped under us; its Disconnected event follows
                self._inflight.clear()
                self.outbox.requeue_inflight()
                return
            self._inflight[mid] = entry
            self.sent += 1
