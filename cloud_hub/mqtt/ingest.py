"""MQTT ingest: device streams into the store, acknowledged only after their commit.

The connection (:mod:`cloud_hub.mqtt.connection`) puts every message on a queue; one worker
takes up to ``batch_max`` of them (and up to ``batch_max_bytes`` of payload), and a writer
decodes them (:mod:`cloud_hub.mqtt.decoding`), stores them in one transaction
(:mod:`cloud_hub.db.ingest_store`) and only then sends their PUBACKs, so a crash between
receipt and commit makes the broker deliver them again, and the (device_id, epoch, seq) keys
make that redelivery harmless. After each commit the streams it touched are handed to the
acknowledgement publisher (:mod:`cloud_hub.mqtt.acks`).

With ``writers=1`` (the default) the worker stores each batch itself. With ``writers=N`` it
hands batches to N writer threads, each with a connection of its own, so that N transactions
are in flight: one writer's Python (decoding, building the statements) runs while another waits
for PostgreSQL. The store's statements are safe for concurrent writers already (rows locked in
key order, device counters added in SQL, watermarks recomputed after the lock), as several hub
processes need. Measured (docs/ingest-measurements.md): one hub stored 3-18% more per second
with two writers, for more CPU per message; two hubs with two writers each stored 27% less than
with one each, PostgreSQL spending half as much again per message. SQLite has one writer at a
time, so more writers only wait for its lock. Whichever writer commits first, the PUBACKs go
out in the order the batches were taken (:class:`_InOrder`), as MQTT asks of QoS 1. At most N
batches are stored at once and one more waits, so memory stays bounded (and the broker's
Receive Maximum bounds what is taken).

Each writer holds one database connection of its own (no pool checkout per batch, and so no
``pool_pre_ping`` round trip: profiled, 8% of a PostgreSQL hub's time); the enrollment screen
(:class:`~cloud_hub.db.enrollments.EnrolledCache`) and the store run in one transaction on it.
A connection that dies (the server restarted, the backend was terminated) fails the batch with
:class:`DatabaseUnavailable`; the connection is dropped and the next attempt opens a new one.

Failures are typed: :class:`DatabaseUnavailable` (down, locked, a deadlock, a lost connection)
keeps the batch and retries it with back-off; :class:`RowsRefused` (something in these rows the
database will not take) splits the batch in halves until the culprit stands alone and becomes a
dead letter, so a bad message costs a few extra commits, not one commit per message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db.enrollments import EnrolledCache
from cloud_hub.db.ingest_store import DeadLetterRecord, IngestBatch, StoreResult, store_batch
from cloud_hub.metrics.histogram import Histogram, HistogramSnapshot
from cloud_hub.mqtt.connection import HubConnection
from cloud_hub.mqtt.decoding import decode_batch, route
from cloud_hub.mqtt.lean import Received
from cloud_hub.mqtt.store_connection import (
    DatabaseUnavailable,
    RowsRefused,
    StoreConnection,
    StoreError,
    classify,
)
from shared.topics import DeviceTopic, TopicError, Topics

__all__ = ["IngestStats", "MqttIngest", "subscriptions"]

log = logging.getLogger(__name__)
_RETRY_MAX_S = 5.0
# How long ingest counts as behind after it last took a full batch (see MqttIngest.behind).
BEHIND_HOLD_S = 2.0
# Streams a share group may split between hub processes (when one is configured).
# Retained streams are subscribed directly: brokers do not send retained messages to shared
# subscriptions, and a hub that starts after a device must still learn its status and model.
_SHARED = (DeviceTopic.TELEMETRY, DeviceTopic.ANOMALIES, DeviceTopic.HEARTBEAT,
           DeviceTopic.DRIFT)
_DIRECT = (DeviceTopic.STATUS, DeviceTopic.REPORTED)


def subscriptions(topics: Topics, share_group: str | None) -> list[tuple[str, int]]:
    """What the hub's connection subscribes to for ingest."""
    if share_group:
        subs = [(topics.hub_shared(t, share_group), 1) for t in _SHARED]
    else:
        subs = [(topics.all_devices(t), 1) for t in _SHARED]
    return subs + [(topics.all_devices(t), 1) for t in _DIRECT]


@dataclass
class IngestStats:
    messages_received: int = 0
    telemetry_batches: int = 0
    telemetry_readings: int = 0
    duplicates: int = 0
    anomalies: int = 0
    drift_summaries: int = 0
    dead_letters: int = 0
    retained_cleared: int = 0
    commits: int = 0
    commit_errors: int = 0
    device_conflicts: int = 0  # batches that showed a device id used by two sources
    last_commit_at: float | None = None
    unenrolled_refused: int = 0  # messages of devices not enrolled (dead letters, not stored)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _InOrder:
    """Releases each batch's PUBACKs once every batch taken before it has released its own,
    whichever writer commits first (MQTT 3.1.1 4.6 and 5.0 4.6: PUBACKs in the order the QoS 1
    PUBLISHes were received)."""

    def __init__(self, release: Callable[[list[Received]], object]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._next = 0
        self._ready: dict[int, list[Received]] = {}

    def done(self, ticket: int, stored: list[Received]) -> None:
        """Batch ``ticket`` is finished: ``stored`` are its messages that were committed (the
        rest stay unacknowledged, and the broker delivers them again)."""
        with self._lock:
            self._ready[ticket] = stored
            while self._next in self._ready:
                self._release(self._ready.pop(self._next))
                self._next += 1


class MqttIngest:
    """Stores what the connection receives; ``start()`` / ``stop()``."""

    def __init__(
        self,
        engine: Engine,
        connection: HubConnection,
        *,
        batch_max: int = 4000,
        batch_max_bytes: int = 32 * 1024 * 1024,
        batch_wait_s: float = 0.05,
        on_commit: Callable[[StoreResult], None] | None = None,
        store: Callable[[Session, IngestBatch], StoreResult] = store_batch,
        writers: int = 1,
    ) -> None:
        if writers < 1:
            raise ValueError(f"ingest needs at least one writer (got {writers})")
        self._engine = engine
        self._store_batch = store
        self._enrolled = EnrolledCache()
        self.connection = connection
        self._batch_max, self._batch_bytes = batch_max, batch_max_bytes
        self._batch_wait = batch_wait_s
        self._on_commit = on_commit
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.stats = IngestStats()
        self._commit_seconds = Histogram()  # each stored part's transaction, under _lock
        self._conflicts_named: set[str] = set()  # devices whose conflict was logged already
        self._full_taken_at = float("-inf")  # monotonic time of the last full batch taken
        self._in_order = _InOrder(connection.ack_received)
        self._worker = threading.Thread(target=self._run, name="hub-ingest", daemon=True)
        # Batches waiting for a writer, with their ticket (None: the worker has stopped).
        self._work: queue.Queue[tuple[int, list[Received]] | None] = queue.Queue(maxsize=1)
        self._writers = [threading.Thread(target=self._write, name=f"hub-ingest-writer-{i}",
                                          daemon=True)
                         for i in range(writers if writers > 1 else 0)]

    @property
    def connected(self) -> bool:
        return self.connection.connected

    @property
    def session(self) -> str:
        return self.connection.session

    def start(self) -> None:
        for writer in self._writers:
            writer.start()
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what was already received, then return."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._worker.is_alive():
            self._worker.join(timeout)
        for writer in self._writers:
            if writer.is_alive():
                writer.join(max(deadline - time.monotonic(), 0.0))

    def behind(self) -> bool:
        """Ingest has a backlog: it took a full batch within the last ``BEHIND_HOLD_S``, or a
        full batch waits in the queue. Background jobs wait while it does (:class:`LeasedWorker`'s
        ``defer_while``), so that the CPU goes to ingest first.

        Held for a moment, not read off the last take alone: under overload the broker refills
        the hub's window only as batches are acknowledged, so a take between two refills can
        come back short, and a job that looked then ran in the middle of the overload (py-spy
        at 2x saturation on SQLite: the maintenance job 5.6% of the hub's samples)."""
        return (time.monotonic() - self._full_taken_at < BEHIND_HOLD_S
                or self.connection.inbound.qsize() >= self._batch_max)

    def snapshot_stats(self) -> IngestStats:
        with self._lock:
            return IngestStats(**self.stats.as_dict())

    def snapshot(self) -> dict[str, Any]:
        return self.figures()[0]

    def figures(self) -> tuple[dict[str, Any], HistogramSnapshot]:
        """The counters and the histogram of commit times, read together (``commits`` and the
        histogram's count agree), with the inbox's and the connection's figures."""
        with self._lock:
            data = self.stats.as_dict()
            commit_seconds = self._commit_seconds.snapshot()
        inbound = self.connection.inbound
        data["queue_depth"] = inbound.qsize()
        data["queue_bytes"] = inbound.bytes
        data["queue_high_water"] = inbound.high_water
        data["queue_waits"] = inbound.waits
        data["dropped_qos0"] = inbound.dropped_qos0
        data["ingest_behind"] = self.behind()
        data["commit_seconds_sum"] = commit_seconds.total
        data.update(self.connection.snapshot())
        return data, commit_seconds

    # -- worker and writers ----------------------------------------------------------------
    def _run(self) -> None:
        """Take batches; store each one (one writer) or hand it to the writers."""
        inbound = self.connection.inbound
        own = None if self._writers else StoreConnection(self._engine)
        ticket = 0
        try:
            while True:
                self.connection.tick()
                messages = inbound.take(self._batch_max, max_bytes=self._batch_bytes,
                                        wait_s=self._batch_wait, first_timeout=0.2)
                if inbound.last_take_full:
                    self._full_taken_at = time.monotonic()
                if not messages:
                    if self._stop.is_set():
                        return
                    continue
                if own is not None:
                    self._store_safely(own, ticket, messages)
                else:
                    self._work.put((ticket, messages))  # waits while every writer is busy
                ticket += 1
        finally:
            for _ in self._writers:
                self._work.put(None)
            if own is not None:
                own.drop()

    def _write(self) -> None:
        """A writer thread: store the batches handed to it until the worker stops."""
        store = StoreConnection(self._engine)
        try:
            while True:
                item = self._work.get()
                if item is None:
                    return
                self._store_safely(store, *item)
        finally:
            store.drop()

    def _store_safely(self, store: StoreConnection, ticket: int,
                      messages: list[Received]) -> None:
        stored: list[Received] = []
        try:
            self._store(store, messages, stored)
        except Exception:  # never let the thread die; the messages stay unacknowledged
            log.exception("ingest: unexpected failure storing %d messages", len(messages))
        finally:
            self._in_order.done(ticket, stored)

    def _store(self, store: StoreConnection, messages: list[Received],
               stored: list[Received]) -> None:
        """Store ``messages``, retrying and splitting as their failures call for; the
        messages committed are added to ``stored``."""
        pending: deque[list[Received]] = deque([messages])
        delay = 0.1
        while pending:
            part = pending.popleft()
            started = time.monotonic()
            try:
                with store.transaction() as session:
                    kept, refused = self._screen(session, part)
                    batch, cleared = decode_batch(self.connection.topics, kept)
                    batch.dead_letters.extend(refused)
                    result = self._store_batch(session, batch)
            except DatabaseUnavailable as exc:
                self._count_error()
                log.warning("ingest: database unavailable (%s); retrying %d message(s) in "
                            "%.1fs", exc, len(part), delay)
                if self._stop.wait(delay):
                    return  # not acknowledged: the broker delivers them again
                delay = min(delay * 2, _RETRY_MAX_S)
                pending.appendleft(part)
                continue
            except RowsRefused as exc:
                self._count_error()
                if len(part) > 1:
                    half = len(part) // 2
                    log.warning("ingest: batch of %d refused (%s); storing it in halves",
                                len(part), exc)
                    pending.appendleft(part[half:])
                    pending.appendleft(part[:half])
                    continue
                letter = self._dead_letter_refused(store, part[0], exc)
                if letter is None:
                    continue
                result, refused, cleared = letter, [], 0
            delay = 0.1
            stored.extend(part)
            self._done(part, result, cleared, refused=len(refused),
                       seconds=time.monotonic() - started)

    def _screen(self, session: Session, part: list[Received]
                ) -> tuple[list[Received], list[DeadLetterRecord]]:
        """Messages of a device that is not enrolled are refused: dead letters naming it,
        never stored and never registering the device (the registry as of this batch's
        transaction: a revocation applies to the next batch screened)."""
        topics = self.connection.topics
        claimed: list[str | None] = []
        for m in part:
            try:
                claimed.append(route(topics, m.topic)[1])
            except TopicError:
                claimed.append(None)  # decoding dead-letters it with the reason
        try:
            enrolled = self._enrolled.among(session, {d for d in claimed if d is not None})
        except Exception as exc:
            raise classify(exc) from exc
        kept, refused = [], []
        now = time.time()
        for m, device_id in zip(part, claimed, strict=True):
            if device_id is not None and device_id not in enrolled:
                refused.append(DeadLetterRecord(
                    topic=m.topic, reason=f"device {device_id!r} is not enrolled",
                    payload=bytes(m.payload), received_at=now))
            else:
                kept.append(m)
        return kept, refused

    def _dead_letter_refused(self, store: StoreConnection, m: Received,
                             exc: StoreError) -> StoreResult | None:
        log.error("ingest: the database refused the message on %s: %s", m.topic, exc)
        letter = IngestBatch(dead_letters=[DeadLetterRecord(
            topic=m.topic, reason=f"store failed: {exc}", payload=bytes(m.payload),
            received_at=time.time())])
        try:
            with store.transaction() as session:
                return self._store_batch(session, letter)
        except StoreError as again:
            log.error("ingest: cannot even dead-letter the message on %s (%s); left "
                      "unacknowledged for redelivery", m.topic, again)
            return None

    def _count_error(self) -> None:
        with self._lock:
            self.stats.commit_errors += 1

    def _done(self, messages: list[Received], result: StoreResult, cleared: int, *,
              refused: int, seconds: float) -> None:
        """Count a committed part (its PUBACKs go out through :class:`_InOrder`)."""
        with self._lock:
            self._commit_seconds.observe(seconds)
            s = self.stats
            s.messages_received += len(messages)
            s.telemetry_batches += result.telemetry_batches
            s.telemetry_readings += result.telemetry_readings
            s.duplicates += result.duplicates
            s.anomalies += result.anomalies
            s.drift_summaries += result.drift_summaries
            s.dead_letters += result.dead_letters
            s.retained_cleared += cleared
            s.commits += 1
            s.last_commit_at = max(s.last_commit_at or 0.0, result.committed_at)
            s.device_conflicts += len(result.conflicts)
            s.unenrolled_refused += refused
            named = [d for d in result.conflicts if d not in self._conflicts_named]
            self._conflicts_named.update(named)
        for device_id in named:
            log.warning("ingest: device id %s is used by two sources (two agents with one "
                        "device_id, or copies of one state); see its conflict in "
                        "GET /api/v1/devices/%s", device_id, device_id)
        if self._on_commit is not None:
            try:
                self._on_commit(result)
            except Exception:
                log.exception("ingest: on_commit hook failed")
