"""Moves messages from the outbox to the MQTT link within a bounded in-flight window.

One thread reads the link's control queue: a PUBACK marks its message delivered (it stays in the
outbox until a hub acknowledgement covers it), a connect or disconnect hands everything not
PUBACKed out again in order, a :class:`Wake` says new messages are waiting. Only ``max_inflight``
messages are ever handed to paho at once; the outbox (:mod:`.delivery`) is the one record of
which. Every round also lets the outbox probe for messages no hub has acknowledged.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

from edge_agent.comms.mqtt import Acked, Connected, Disconnected, LinkEvent, Wake
from edge_agent.telemetry.outbox import Outbox, Stream

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
        self.acked: dict[Stream, int] = {s: 0 for s in Stream}  # PUBACKs
        self.acked_readings = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = name
        self._last_refusal: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self.control.put(Wake())

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
                if self.link.connected:
                    self.outbox.probe()
                self._fill_window()
            except Exception:  # the outbox keeps everything; log and go on
                log.exception("sender %s: unexpected error, retrying", self._name)
                self._stop.wait(0.5)

    def _handle(self, events: list[LinkEvent]) -> None:
        for event in events:
            if isinstance(event, Acked):
                entry = self.outbox.puback(event.mid, event.ok)
                if entry is None:
                    continue
                if event.ok:
                    self.acked[entry.stream] += 1
                    if entry.stream is Stream.TELEMETRY:
                        self.acked_readings += entry.readings
                else:
                    self.refused += 1
                    if event.reason != self._last_refusal:
                        log.error("broker refused %s seq %d on %s: %s (kept; resent after "
                                  "reconnect)", entry.stream.value, entry.seq, entry.topic,
                                  event.reason)
                        self._last_refusal = event.reason
            elif isinstance(event, Connected | Disconnected):
                self.outbox.requeue_inflight()

    def _fill_window(self) -> None:
        if not self.link.connected:
            return
        free = self.max_inflight - self.outbox.inflight()
        if free <= 0:
            return
        for entry in self.outbox.take(free):
            mid = self.link.publish(entry.topic, entry.payload, qos=1)
            if mid is None:  # the link dropped under us; its Disconnected event follows
                self.outbox.requeue_inflight()
                return
            self.outbox.sent(mid, entry)
            self.sent += 1
