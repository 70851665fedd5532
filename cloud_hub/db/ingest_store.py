"""Write what MQTT ingest decoded: one transaction per batch of messages, duplicates ignored.

Deduplication is by primary key (device_id, epoch, seq) per stream, inside the insert itself
(``INSERT … ON CONFLICT DO NOTHING RETURNING`` the keys stored): no SELECT of keys before it,
and two hub processes sharing a database can never store a message twice. A telemetry batch's
key goes to ``telemetry_keys`` first, and its row is written only when the key was new (the
row's table is in day partitions on PostgreSQL, which cannot hold that key unique by itself:
:mod:`cloud_hub.db.tables`). On PostgreSQL both go by COPY, which the unique key refuses whole
if one key was stored already; then the keys go the ``ON CONFLICT`` way
(:func:`cloud_hub.db.ingest_tables.insert_keys`).
The same transaction advances the delivery watermarks of every stream it touched
(:mod:`cloud_hub.db.marks`), so an acknowledgement never covers a row that is not committed, and
flags a device id that two sources use (:mod:`cloud_hub.db.conflicts`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session

from cloud_hub.db import ingest_tables
from cloud_hub.db.conflicts import (
    epoch_conflicts,
    read_marks,
    record_conflicts,
    seq_conflicts,
)
from cloud_hub.db.device_updates import (
    add_device_counts,
    apply_device_records,
    ensure_device_rows,
    remember_devices,
)
from cloud_hub.db.drift_store import drift_row, store_drift
from cloud_hub.db.drift_tables import DriftSummaryRow
from cloud_hub.db.marks import MarkKey, Stream, advance_marks, stored_runs
from cloud_hub.db.tables import DeadLetter
from shared.messages import (
    AnomalyEvent,
    DriftSummary,
    Heartbeat,
    Reported,
    Status,
    TelemetryBatch,
)
from shared.packed import PackedTelemetry, Telemetry, pack_doubles, timestamps

__all__ = ["DeadLetterRecord", "IngestBatch", "StoreResult", "store_batch"]

log = logging.getLogger(__name__)

_PREVIEW_BYTES = 256


@dataclass(frozen=True)
class DeadLetterRecord:
    topic: str
    reason: str
    payload: bytes
    received_at: float


@dataclass
class IngestBatch:
    """Decoded messages of one ingest transaction."""

    telemetry: list[Telemetry] = field(default_factory=list)
    anomalies: list[AnomalyEvent] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    heartbeats: list[Heartbeat] = field(default_factory=list)
    reported: list[Reported] = field(default_factory=list)
    drift: list[DriftSummary] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)

    def add(self, message: Any) -> None:
        """Put a decoded message in its list (by its type)."""
        getattr(self, _LIST_OF[type(message)]).append(message)

    def __len__(self) -> int:
        return sum(
            len(x)
            for x in (self.telemetry, self.anomalies, self.statuses, self.heartbeats,
                      self.reported, self.drift, self.dead_letters)
        )


# The IngestBatch list each decoded message type goes to.
_LIST_OF: dict[type, str] = {
    TelemetryBatch: "telemetry", PackedTelemetry: "telemetry", AnomalyEvent: "anomalies",
    Status: "statuses", Heartbeat: "heartbeats", Reported: "reported", DriftSummary: "drift"}


@dataclass(frozen=True)
class StoreResult:
    telemetry_batches: int
    telemetry_readings: int
    duplicates: int
    anomalies: int
    dead_letters: int
    committed_at: float
    # (device_id, epoch) of every telemetry or anomaly stream the batch touched (to acknowledge)
    touched: tuple[tuple[str, str], ...] = ()
    conflicts: tuple[str, ...] = ()  # devices this batch showed used by two sources
    drift_summaries: int = 0
    device_states: int = 0  # status, reported and heartbeat messages stored
    commit_s: float = 0.0  # from the anomalies' stored_at stamp to the commit's return


def _telemetry_key(t: Telemetry) -> tuple[Any, ...]:
    """A batch's key row, in ingest_tables.column_names(telemetry_keys) order."""
    ts = timestamps(t)
    return (t.device_id, t.epoch, t.seq, len(ts), min(ts), max(ts))


def _telemetry_row(t: Telemetry, key: tuple[Any, ...], channels_json: Any,
                   received: float) -> tuple[Any, ...]:
    """One telemetry row, in ingest_tables.column_names order, from the batch and its key
    row. A MessagePack batch brings its ts and values as the float64 bytes the row holds:
    stored as they came."""
    blobs = ((t.ts, t.values) if isinstance(t, PackedTelemetry)
             else (pack_doubles(t.ts), pack_doubles(t.values)))
    device_id, epoch, seq, readings, ts_first, ts_last = key
    return (device_id, epoch, seq, channels_json(t.channels), readings, ts_first, ts_last,
            *blobs, received)


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


Key = tuple[str, str, int]


def _unique(items: Sequence[Any]) -> list[Any]:
    """The first of each (device_id, epoch, seq) in ``items``, in key order (so that writers
    sharing a database take their row locks in the same order)."""
    first: dict[Key, Any] = {}
    for item in items:
        first.setdefault((item.device_id, item.epoch, item.seq), item)
    return [first[k] for k in sorted(first)]


def _marks_of(batch: IngestBatch) -> dict[MarkKey, tuple[int, int]]:
    """(highest floor, highest seq) per stream touched, duplicates included: a message sent
    again must still advance its stream's watermark and be answered."""
    touched: dict[MarkKey, tuple[int, int]] = {}
    streams: tuple[tuple[Stream, Sequence[Any]], ...] = (
        (Stream.TELEMETRY, batch.telemetry), (Stream.ANOMALIES, batch.anomalies),
        (Stream.DRIFT, batch.drift))
    for stream, items in streams:
        per: dict[tuple[str, str], list[int]] = {}  # plain tuples: no MarkKey per message
        for m in items:
            acc = per.get((m.device_id, m.epoch))
            if acc is None:
                per[(m.device_id, m.epoch)] = [m.floor, m.seq]
                continue
            if m.floor > acc[0]:
                acc[0] = m.floor
            if m.seq > acc[1]:
                acc[1] = m.seq
        for (device_id, epoch), (floor, top) in per.items():
            touched[MarkKey(device_id, epoch, stream)] = (max(floor, 0), max(top, -1))
    return touched


def _touched_devices(batch: IngestBatch) -> set[str]:
    return {
        m.device_id
        for group in (batch.telemetry, batch.anomalies, batch.statuses, batch.heartbeats,
                      batch.reported, batch.drift)
        for m in group
    }


@dataclass
class _Counts:
    """What one commit adds to a device's row."""

    readings: int = 0
    batches: int = 0
    anomalies: int = 0
    seen: float | None = None


def store_batch(session: Session, batch: IngestBatch, *, now: float | None = None) -> StoreResult:
    """Store one batch in the session's transaction and commit it.

    Core statements only (no ORM objects): multi-row inserts that skip stored keys, device
    counters added to in SQL (``n = n + :k``, so hub processes sharing the database never
    lose or double a count), one statement per kind of change, executed for many rows.
    """
    received = now if now is not None else time.time()
    conn = session.connection()
    new_devices = ensure_device_rows(conn, _touched_devices(batch))

    counts: dict[str, _Counts] = {}

    def count(device_id: str) -> _Counts:
        c = counts.get(device_id)
        if c is None:
            c = counts[device_id] = _Counts()
        return c

    marks = _marks_of(batch)
    before = read_marks(session, {k.device_id for k in marks})  # as they were: nothing stored yet
    telemetry = _unique(batch.telemetry)
    channels_json = ingest_tables.channels_json
    # Tuples in ingest_tables.column_names order (no dict per row). The keys first: a row is
    # written only for a key this statement stored.
    keys = [_telemetry_key(t) for t in telemetry]
    stored_t = ingest_tables.insert_keys(conn, keys, before.watermarks)
    inserted = ingest_tables.insert_counted(conn, ingest_tables.telemetry, [
        _telemetry_row(t, key, channels_json, received)
        for t, key in zip(telemetry, keys, strict=True) if key[:3] in stored_t])
    if inserted != len(stored_t):  # only if key rows were deleted without their telemetry rows
        log.error("ingest: %d of %d telemetry batches new to telemetry_keys were in the "
                  "telemetry table already (key rows deleted by hand?); the rows stored "
                  "before were kept", len(stored_t) - inserted, len(stored_t))
    readings = 0
    stored_keys: list[Key] = []  # in key order, for the runs that move the watermarks
    for t in telemetry:
        key = (t.device_id, t.epoch, t.seq)
        if key in stored_t:
            stored_keys.append(key)
            n = t.readings
            readings += n
            c = count(t.device_id)
            c.readings += n
            c.batches += 1
    for device_id in _touched_devices(batch):  # duplicates still prove the device is alive
        count(device_id).seen = received

    dead = [
        {
            "topic": d.topic[:512], "reason": d.reason[:2000],
            "payload_preview": d.payload[:_PREVIEW_BYTES].decode("utf-8", errors="replace"),
            "payload_size": len(d.payload), "received_at": d.received_at,
        }
        for d in batch.dead_letters
    ]
    if dead:
        conn.execute(_table(DeadLetter).insert(), dead)

    committed_at = time.time()
    anomalies = _unique(batch.anomalies)
    stored_a = _insert_new(conn, ingest_tables.anomalies, [
        {"device_id": a.device_id, "epoch": a.epoch, "seq": a.seq, "ts_start": a.ts[0],
         "ts_end": a.ts[1], "score": a.score, "threshold": a.threshold,
         "model_name": a.model.name, "model_version": a.model.version,
         "channels": ingest_tables.channels_json(a.channels), "detected_at": a.detected_at,
         "stored_at": committed_at}
        for a in anomalies
    ])
    for device_id, _epoch, _seq in stored_a:
        count(device_id).anomalies += 1
    drift = _unique(batch.drift)
    stored_d = _insert_drift(conn, [drift_row(d, committed_at) for d in drift])
    store_drift(session, [d for d in drift if (d.device_id, d.epoch, d.seq) in stored_d],
                now=committed_at)

    add_device_counts(conn, [
        {"d": d, "r": c.readings, "b": c.batches, "a": c.anomalies, "seen": c.seen}
        for d, c in sorted(counts.items())
    ])
    apply_device_records(conn, heartbeats=batch.heartbeats, statuses=batch.statuses,
                         reported=batch.reported, received=received)
    conflicts = epoch_conflicts(before, marks) + seq_conflicts(session, batch.telemetry,
                                                               stored_t)
    record_conflicts(session, conflicts, now=received)
    runs = {**stored_runs(Stream.TELEMETRY, stored_keys),
            **stored_runs(Stream.ANOMALIES, sorted(stored_a)),
            **stored_runs(Stream.DRIFT, sorted(stored_d))}
    advance_marks(session, marks, now=received, runs=runs)
    stored_at = _stamp_stored(conn, stored_a)
    session.commit()
    remember_devices(conn, new_devices)
    return StoreResult(
        telemetry_batches=len(stored_t), telemetry_readings=readings,
        duplicates=(len(batch.telemetry) - len(stored_t) + len(batch.anomalies) - len(stored_a)
                    + len(batch.drift) - len(stored_d)),
        anomalies=len(stored_a), dead_letters=len(dead), committed_at=committed_at,
        commit_s=time.time() - stored_at if stored_at is not None else 0.0,
        touched=tuple(sorted({(k.device_id, k.epoch) for k in marks})),
        conflicts=tuple(sorted({c.device_id for c in conflicts})),
        drift_summaries=len(stored_d),
        device_states=len(batch.statuses) + len(batch.reported) + len(batch.heartbeats),
    )


_STAMP_STORED = (update(ingest_tables.anomalies)
                 .where(ingest_tables.anomalies.c.device_id == bindparam("d"),
                        ingest_tables.anomalies.c.epoch == bindparam("e"),
                        ingest_tables.anomalies.c.seq == bindparam("q"))
                 .values(stored_at=bindparam("at")))


def _stamp_stored(conn: Connection, keys: set[Key]) -> float | None:
    """Stamp the anomalies this batch stored with the time right before the commit (the last
    statement of the transaction); that time, or None when there are none.

    ``stored_at`` is where the fleet bench's window-to-hub ends: stamped when the row was
    inserted, it would leave out the rest of the batch's writes. The commit itself follows
    (SQLite WAL with synchronous=NORMAL: a WAL append, no fsync). Anomalies are few (about
    100 a minute across 1,000 devices), so the extra statement is rare."""
    if not keys:
        return None
    at = time.time()
    conn.execute(_STAMP_STORED, [{"d": d, "e": e, "q": q, "at": at} for d, e, q in keys])
    return at


def _insert_new(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> set[Key]:
    """Insert ``rows``, skipping keys already stored; the keys this statement stored."""
    return ingest_tables.insert_new(conn, table, rows)




def _insert_drift(conn: Connection, rows: list[dict[str, Any]]) -> set[Key]:
    """Drift summaries are few (one per device every few minutes): plain multi-row VALUES
    through the SQLModel table, keys already stored skipped."""
    if not rows:
        return set()
    table = _table(DriftSummaryRow)
    insert: Any = (postgresql.insert(table) if conn.dialect.name == "postgresql"
                   else sqlite.insert(table))
    stmt = insert.on_conflict_do_nothing().returning(table.c.device_id, table.c.epoch,
                                                     table.c.seq)
    return {(d, e, int(s)) for d, e, s in conn.execute(stmt, rows)}
