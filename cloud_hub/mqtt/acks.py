"""Delivery acknowledgements, hub -> device: what of each device's stream epoch is committed.

After each commit, ingest reports the (device, epoch) streams it touched. A thread publishes,
for each touched device, one retained :class:`~shared.messages.Ack` on the device's ``ack``
topic, at most one per ``interval_s`` per device (touches in between are coalesced), read from
the marks committed in the database (:func:`cloud_hub.db.marks.acks_for`): so with several hub
processes on one database, each acknowledges what any of them stored. A touch that did not move
the watermark is still answered: it tells the device that a hub is storing its stream, and its
``top`` shows what went missing below it. QoS 0: a lost acknowledgement is replaced by the next
one, and the broker retains the latest for a device that reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db.marks import acks_for
from cloud_hub.mqtt.connection import HubConnection
from shared.messages import encode

__all__ = ["AckPublisher"]

log = logging.getLogger(__name__)


class AckPublisher:
    def __init__(self, engine: Engine, connection: HubConnection, *,
                 interval_s: float = 1.0) -> None:
        self._engine = engine
        self._connection = connection
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._touched: dict[str, str] = {}  # device -> epoch last touched (the current one)
        self._last: dict[str, float] = {}  # device -> monotonic time of its last ack
        self.published = 0
        self.bytes = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="hub-acks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def touched(self, streams: Iterable[tuple[str, str]]) -> None:
        """(device_id, epoch) pairs a commit stored or saw again."""
        with self._lock:
            for device_id, epoch in streams:
                self._touched[device_id] = epoch
        self._wake.set()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"acks_published": self.published, "ack_bytes": self.bytes,
                    "acks_pending": len(self._touched), "ack_errors": self.errors}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(min(0.25, self.interval_s))
            self._wake.clear()
            try:
                self._publish_due()
            except Exception:  # a database hiccup: the touches stay, try again next round
                with self._lock:
                    self.errors += 1
                log.exception("acks: publishing acknowledgements failed; retrying")
                self._stop.wait(1.0)

    def _publish_due(self) -> None:
        if not self._connection.connected:
            return
        now = time.monotonic()
        with self._lock:
            due = {d: e for d, e in self._touched.items()
                   if now - self._last.get(d, float("-inf")) >= self.interval_s}
            for device_id in due:
                del self._touched[device_id]
        if not due:
            return
        with Session(self._engine) as session:
            acks = acks_for(session, due.items(), at=time.time())
        topics = self._connection.topics
        messages = [(topics.ack(ack.device_id), encode(ack)) for ack in acks]
        if not self._connection.publish_many(messages, retain=True):
            with self._lock:  # the connection went meanwhile: answer them after it is back
                for device_id, epoch in due.items():
                    self._touched.setdefault(device_id, epoch)
            return
        sent = len(messages)
        size = sum(len(payload) for _, payload in messages)
        with self._lock:
            for device_id in due:
                self._last[device_id] = now
            self.published += sent
            self.bytes += size
