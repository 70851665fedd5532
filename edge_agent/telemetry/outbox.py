"""The durable outbox: every telemetry batch and anomaly event is written here before it is sent,
and stays until the hub acknowledges that it stored it.

One object over three parts, each with one job: :mod:`.store` (SQLite: rows, seqs, the stream
epoch, counters), :mod:`.accounting` (totals, bounds and counted drops) and :mod:`.delivery`
(what is in flight and what must go out again). A message gets its ``seq`` here (per device and
stream, monotonic across restarts) within this outbox's ``epoch``; it goes out with ``floor`` set
to the lowest seq of its stream still held, and leaves when a hub
:class:`~shared.messages.Ack` covers it. Thread-safe: one lock around every change.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.telemetry import store
from edge_agent.telemetry.accounting import Accounting, DropStats, OutboxError
from edge_agent.telemetry.delivery import Delivery, streams
from edge_agent.telemetry.store import OutboxEntry, Stream, transaction
from shared.messages import Ack, MessageError, with_floor

__all__ = ["AckResult", "DropStats", "Outbox", "OutboxEntry", "OutboxError", "OutboxSnapshot",
           "Stream"]

_EXPIRE_EVERY_S = 1.0


@dataclass(frozen=True)
class OutboxSnapshot:
    """What ``edge-agent status`` shows, read without the agent's help."""

    depth: int
    bytes: int
    oldest_created_at: float | None
    drops: DropStats
    next_seq: dict[str, int]
    delivered: int = 0  # PUBACKed by the broker, waiting for the hub's acknowledgement
    epoch: str | None = None


@dataclass(frozen=True)
class AckResult:
    """What one hub acknowledgement did."""

    stored: dict[Stream, int]  # messages it covered (now gone from the outbox), per stream
    stored_readings: int
    resend: int  # messages queued again because it shows them missing


class Outbox:
    """Durable, bounded, ordered store of messages until the hub acknowledges them."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 7 * 86400,
        anomaly_max_age_s: float = 30 * 86400,
        synchronous: str = "full",
        ack_timeout_s: float = 10.0,
        probe_max_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = store.open_store(self.path, synchronous)
        self.epoch = store.load_epoch(self._db)
        self._accounting = Accounting(self._db, max_bytes=max_bytes, max_age_s=max_age_s,
                                      anomaly_max_age_s=anomaly_max_age_s)
        self._delivery = Delivery(self._db, ack_timeout_s=ack_timeout_s, probe_max_s=probe_max_s)
        self._last_expiry = 0.0

    @property
    def max_bytes(self) -> int:
        return self._accounting.max_bytes

    # -- writing -----------------------------------------------------------------------
    def add(self, *, device_id: str, stream: Stream, topic: str, build: Callable[[int], bytes],
            readings: int = 0) -> OutboxEntry:
        """Assign the next ``seq``, build the payload with it, and store it durably."""
        now = self._clock()
        with self._lock:
            protected = self._delivery.sending_ids()
            with transaction(self._db):
                if now - self._last_expiry >= _EXPIRE_EVERY_S:
                    self._last_expiry = now
                    self._accounting.expire(now, protected)
                seq = store.next_seq(self._db, device_id, stream)
                payload = build(seq)
                self._accounting.make_room(len(payload), stream, protected)
                row_id = store.insert(self._db, device_id=device_id, stream=stream, seq=seq,
                                      topic=topic, payload=payload, readings=readings, now=now)
            self._accounting.added(len(payload))
            self._delivery.maybe_queued = True
        return OutboxEntry(row_id, device_id, stream, seq, topic, payload, readings, now)

    # -- sending -----------------------------------------------------------------------
    def take(self, limit: int) -> list[OutboxEntry]:
        """The next ``limit`` messages to send, oldest first, each with its stream's floor."""
        if limit <= 0:
            return []
        with self._lock:
            rows = self._delivery.take(limit)
            floors: dict[tuple[str, Stream], int] = {}
            out = []
            for e in rows:
                key = (e.device_id, e.stream)
                if key not in floors:
                    floors[key] = store.lowest_seq(self._db, e.device_id, e.stream) or 0
                floor = min(floors[key], e.seq)
                out.append(OutboxEntry(e.id, e.device_id, e.stream, e.seq, e.topic,
                                       with_floor(e.payload, floor), e.readings, e.created_at))
        return out

    def sent(self, mid: int, entry: OutboxEntry) -> None:
        """``entry`` is with the link as message ``mid``, waiting for its PUBACK."""
        with self._lock:
            self._delivery.sent(mid, entry)

    def puback(self, mid: int, ok: bool = True) -> OutboxEntry | None:
        """The broker took (or refused) message ``mid``; it stays until the hub covers it."""
        with self._lock:
            return self._delivery.puback(mid, ok, self._clock())

    def requeue_inflight(self) -> None:
        """The link went down or came up: everything not PUBACKed is handed out again."""
        with self._lock:
            self._delivery.link_changed()

    def apply_ack(self, ack: Ack, *, live: bool) -> AckResult:
        """A hub acknowledgement for this outbox's device(s): delete what it covers, queue
        again what it shows missing. An acknowledgement of another epoch changes nothing."""
        stored: dict[Stream, int] = {s: 0 for s in Stream}
        if ack.epoch != self.epoch:
            return AckResult(stored, 0, 0)
        now = self._clock()
        readings = resend = 0
        # A stream the hub has stored nothing of (often the anomalies) needs no statement.
        marks = [(stream, mark) for stream, mark in streams(ack) if mark.top >= 0]
        with self._lock, transaction(self._db):
            for stream, mark in marks:
                assigned = store.next_seq(self._db, ack.device_id, stream) - 1
                if mark.top > assigned:
                    # No hub can have stored what was never sent: believing it would delete
                    # messages nobody has. Refused before anything changes.
                    raise MessageError(
                        f"Ack: {stream.value} top {mark.top} is above the highest seq this "
                        f"device has sent in epoch {self.epoch} ({assigned})")
            for stream, mark in marks:
                gone = store.delete_covered(self._db, ack.device_id, stream, mark.watermark)
                self._accounting.removed(gone)
                stored[stream] = len(gone)
                readings += sum(r.readings for r in gone)
                resend += self._delivery.on_ack(ack.device_id, stream, mark, live=live, now=now)
                refused = self._delivery.refused(ack.device_id, stream)
                if refused is not None:
                    self._accounting.drop(
                        store.delete_covered(self._db, ack.device_id, stream, refused),
                        reason=f"{stream.value} seq {refused} was sent "
                               f"{self._delivery.refused_after + 1} times and the hub stored "
                               f"later ones but never it (refused: see the hub's dead letters)")
        return AckResult(stored, readings, resend)

    def probe(self) -> int:
        """Send again the newest long-uncovered message of each stream when its probe is due."""
        with self._lock:
            if self._accounting.depth == 0:  # nothing held, nothing to probe for: no query
                return 0
            return self._delivery.probe_due(self._clock())

    # -- looking -----------------------------------------------------------------------
    def depth(self) -> int:
        return self._accounting.depth

    def pending_bytes(self) -> int:
        return self._accounting.bytes

    def inflight(self) -> int:
        """Messages with the link, waiting for their PUBACK."""
        return len(self._delivery.sending)

    def delivered(self) -> int:
        """Messages the broker took that no hub acknowledgement covers yet."""
        with self._lock:
            return store.delivered_count(self._db)

    @property
    def resent(self) -> int:
        return self._delivery.resent

    def oldest_age(self) -> float:
        with self._lock:
            oldest = store.oldest_created(self._db)
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def drops(self) -> DropStats:
        with self._lock:
            return DropStats.read(self._db)

    def next_seq(self, device_id: str, stream: Stream) -> int:
        with self._lock:
            return store.next_seq(self._db, device_id, stream)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def inspect(path: Path | str) -> OutboxSnapshot:
        """Read an outbox another process may be writing, without changing it."""
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
        try:
            depth, size, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_at) FROM outbox"
            ).fetchone()
            seqs = {f"{d}/{s}": int(n)
                    for d, s, n in db.execute("SELECT device_id, stream, next_seq FROM seqs")}
            try:
                delivered = store.totals(db)[2]
            except sqlite3.OperationalError:  # written before acknowledgements existed
                delivered = 0
            return OutboxSnapshot(int(depth), int(size), oldest, DropStats.read(db), seqs,
                                  delivered, store.read_meta(db, "epoch"))
        finally:
            db.close()
