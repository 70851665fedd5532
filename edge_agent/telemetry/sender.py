"""Moves messages from the outbox to a link within a bounded in-flight window.

:class:`SendWindow` is the logic, with no thread: a PUBACK marks its message delivered (it stays
in the outbox until a hub acknowledgement covers it), a connect or disconnect hands everything
not PUBACKed out again in order, and :meth:`SendWindow.fill` hands the link at most
``max_inflight`` messages at once; the outbox (:mod:`.delivery`) is the one record of which.
Every fill also lets the outbox probe for messages no hub has acknowledged. The device core
(:mod:`edge_agent.core`) owns one; :class:`Sender` is a thread that drives a window from an
:class:`~edge_agent.comms.mqtt.MqttLink`'s control queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

from edge_agent.comms.mqtt import Acked, Connected, Disconnected, LinkEvent, Wake
from edge_agent.telemetry.outbox import Outbox, OutboxEntry, Stream

__all__ = ["LinkDriven", "Publisher", "SendWindow", "Sender"]

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What the window needs from a link (``MqttLink`` is one)."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None: ...


class SendWindow:
    """The in-flight window over one outbox, and what the broker acknowledged (no thread)."""

    def __init__(self, outbox: Outbox, *, max_inflight: int = 100, name: str = "sender") -> None:
        self.outbox = outbox
        self.max_inflight = max_inflight
        self.name = name
        self.sent = 0
        self.acked: dict[Stream, int] = {s: 0 for s in Stream}  # PUBACKs
        self.acked_readings = 0
        self.refused = 0
        self._last_refusal: str | None = None

    def puback(self, mid: int, ok: bool, reason: str = "") -> OutboxEntry | None:
        """The broker answered message ``mid``; its entry (None when it is not ours)."""
        entry = self.outbox.puback(mid, ok)
        if entry is None:
            return None
        if ok:
            self.acked[entry.stream] += 1
            if entry.stream is Stream.TELEMETRY:
                self.acked_readings += entry.readings
        else:
            self.refused += 1
            if reason != self._last_refusal:
                log.error("%s: broker refused %s seq %d on %s: %s (kept; resent after "
                          "reconnect)", self.name, entry.stream.value, entry.seq, entry.topic,
                          reason)
                self._last_refusal = reason
        return entry

    def link_changed(self) -> None:
        """Connected or disconnected: everything not PUBACKed goes out again, in order."""
        self.outbox.requeue_inflight()

    def fill(self, link: Publisher) -> int:
        """Probe, then hand the link what fits in the window; how many messages went out."""
        if not link.connected:
            return 0
        self.outbox.probe()
        free = self.max_inflight - self.outbox.inflight()
        count = 0
        for entry in self.outbox.take(free):
            mid = link.publish(entry.topic, entry.payload, qos=1)
            if mid is None:  # the link dropped under us; its Disconnected event follows
                self.outbox.requeue_inflight()
                break
            self.outbox.sent(mid, entry)
            self.sent += 1
            count += 1
        return count


class LinkDriven(Protocol):
    """What a :class:`Sender` thread drives (:class:`~edge_agent.core.DeviceCore` is one)."""

    def on_puback(self, mid: int, ok: bool = True, reason: str = "") -> None: ...

    def on_link_up(self, session_present: bool = False) -> None: ...

    def on_link_down(self, reason: str = "") -> None: ...

    def send_now(self) -> int: ...


class _WindowOnLink:
    """A bare window on a link, for a sender with no device core (benches, tests)."""

    def __init__(self, window: SendWindow, link: Publisher) -> None:
        self.window, self.link = window, link

    def on_puback(self, mid: int, ok: bool = True, reason: str = "") -> None:
        self.window.puback(mid, ok, reason)

    def on_link_up(self, session_present: bool = False) -> None:
        self.window.link_changed()

    def on_link_down(self, reason: str = "") -> None:
        self.window.link_changed()

    def send_now(self) -> int:
        return self.window.fill(self.link)


class Sender:
    """A thread that feeds a link's control queue (PUBACKs, connects, disconnects, wake-ups) to
    ``target`` and lets it send after each round."""

    def __init__(
        self,
        control: queue.Queue[LinkEvent],
        target: LinkDriven,
        *,
        name: str = "sender",
    ) -> None:
        self.control = control
        self.target = target
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = name

    @classmethod
    def for_outbox(cls, outbox: Outbox, link: Publisher, control: queue.Queue[LinkEvent], *,
                   max_inflight: int = 100, name: str = "sender") -> Sender:
        """A sender of one outbox's messages with no device core around it."""
        window = SendWindow(outbox, max_inflight=max_inflight, name=name)
        return cls(control, _WindowOnLink(window, link), name=name)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

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
        target = self.target
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
                for event in events:
                    if isinstance(event, Acked):
                        target.on_puback(event.mid, event.ok, event.reason)
                    elif isinstance(event, Connected):
                        target.on_link_up(event.session_present)
                    elif isinstance(event, Disconnected):
                        target.on_link_down(event.reason)
                target.send_now()
            except Exception:  # the outbox keeps everything; log and go on
                log.exception("sender %s: unexpected error, retrying", self._name)
                self._stop.wait(0.5)
