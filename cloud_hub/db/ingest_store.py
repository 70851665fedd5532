"""Write what MQTT ingest decoded: one transaction per batch of messages, duplicates ignored.

Deduplication is by primary key (device_id, epoch, seq) per stream, inside the insert itself
(``INSERT … ON CONFLICT DO NOTHING RETURNING`` the keys stored, on SQLite and PostgreSQL alike):
no SELECT before it, and two hub processes sharing a database can never store a message twice.
The same transaction advances the delivery watermarks of every stream it touched
(:mod:`cloud_hub.db.marks`), so an acknowledgement never covers a row that is not committed, and
flags a device id that two sources use (:mod:`cloud_hub.db.conflicts`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from cloud_hub.db.conflicts import epoch_conflicts, record_conflicts, seq_conflicts
from cloud_hub.db.devices import ensure_devices
from cloud_hub.db.marks import MarkKey, Stream, advance_marks
from cloud_hub.db.tables import Anomaly, DeadLetter, Device, TelemetryBatchRow
from shared.messages import (
    AnomalyEvent,
    DeviceStatus,
    Heartbeat,
    ModelState,
    Reported,
    Status,
    TelemetryBatch,
)

__all__ = ["DeadLetterRecord", "IngestBatch", "StoreResult", "pack_floats", "store_batch"]

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

    telemetry: list[TelemetryBatch] = field(default_factory=list)
    anomalies: list[AnomalyEvent] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    heartbeats: list[Heartbeat] = field(default_factory=list)
    reported: list[Reported] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)

    def add(self, message: Any) -> None:
        """Put a decoded message in its list (by its type)."""
        lists: dict[type, list[Any]] = {
            TelemetryBatch: self.telemetry, AnomalyEvent: self.anomalies,
            Status: self.statuses, Heartbeat: self.heartbeats, Reported: self.reported,
        }
        lists[type(message)].append(message)

    def __len__(self) -> int:
        return sum(
            len(x)
            for x in (self.telemetry, self.anomalies, self.statuses, self.heartbeats,
                      self.reported, self.dead_letters)
        )


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


def pack_floats(values: Sequence[float] | Sequence[Sequence[float]]) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


Key = tuple[str, str, int]


def _insert_new(session: Session, model: Any, rows: list[dict[str, Any]]) -> set[Key]:
    """Insert ``rows``, skipping keys already stored; the keys this statement stored."""
    if not rows:
        return set()
    table = _table(model)
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    stmt = insert.on_conflict_do_nothing().returning(table.c.device_id, table.c.epoch,
                                                     table.c.seq)
    stored: set[Key] = set()
    for d, e, s in session.execute(stmt, rows):
        stored.add((d, e, int(s)))
    return stored


def _unique(items: Sequence[Any]) -> list[Any]:
    """The first of each (device_id, epoch, seq) in ``items``."""
    seen: set[Key] = set()
    first: list[Any] = []
    for item in items:
        key = (item.device_id, item.epoch, item.seq)
        if key not in seen:
            seen.add(key)
            first.append(item)
    return first


def _marks_of(batch: IngestBatch) -> dict[MarkKey, tuple[int, int]]:
    """(highest floor, highest seq) per stream touched, duplicates included: a message sent
    again must still advance its stream's watermark and be answered."""
    touched: dict[MarkKey, tuple[int, int]] = {}
    for stream, items in ((Stream.TELEMETRY, batch.telemetry), (Stream.ANOMALIES,
                                                               batch.anomalies)):
        for m in items:
            key = MarkKey(m.device_id, m.epoch, stream)
            floor, top = touched.get(key, (0, -1))
            touched[key] = (max(floor, m.floor), max(top, m.seq))
    return touched


def _touched_devices(batch: IngestBatch) -> set[str]:
    return {
        m.device_id
        for group in (batch.telemetry, batch.anomalies, batch.statuses, batch.heartbeats,
                      batch.reported)
        for m in group
    }


def _seen(device: Device, at: float) -> None:
    device.last_seen = max(device.last_seen or 0.0, at)


def store_batch(session: Session, batch: IngestBatch, *, now: float | None = None) -> StoreResult:
    """Store one batch in the session's transaction and commit it."""
    received = now if now is not None else time.time()
    rows_by_id = ensure_devices(session, _touched_devices(batch))
    devices = rows_by_id.__getitem__

    telemetry = _unique(batch.telemetry)
    stored_t = _insert_new(session, TelemetryBatchRow, [
        {"device_id": t.device_id, "epoch": t.epoch, "seq": t.seq, "channels": list(t.channels),
         "readings": t.readings, "ts_first": min(t.ts), "ts_last": max(t.ts),
         "ts_blob": pack_floats(t.ts), "values_blob": pack_floats(t.values),
         "stored_at": received}
        for t in telemetry
    ])
    readings = 0
    for t in telemetry:
        if (t.device_id, t.epoch, t.seq) in stored_t:
            readings += t.readings
            device = devices(t.device_id)
            device.telemetry_readings += t.readings
            device.telemetry_batches += 1
    for t in batch.telemetry:  # duplicates still prove the device is alive
        _seen(devices(t.device_id), received)

    for h in batch.heartbeats:
        device = devices(h.device_id)
        device.heartbeat = {k: v for k, v in h.to_dict().items() if k not in ("v", "device_id")}
        _seen(device, received)
    for s in batch.statuses:
        device = devices(s.device_id)
        # Arrival order, not ``at``: a last will carries the time it was set at connect,
        # which is older than the `online` record it replaces.
        device.online = s.state == DeviceStatus.ONLINE
        device.status_at = s.at
        device.agent_version = s.agent_version or device.agent_version
        _seen(device, received)
    for r in batch.reported:
        _apply_reported(devices(r.device_id), r)
    dead = [
        {
            "topic": d.topic[:512], "reason": d.reason[:2000],
            "payload_preview": d.payload[:_PREVIEW_BYTES].decode("utf-8", errors="replace"),
            "payload_size": len(d.payload), "received_at": d.received_at,
        }
        for d in batch.dead_letters
    ]
    if dead:
        session.execute(_table(DeadLetter).insert(), dead)

    committed_at = time.time()
    anomalies = _unique(batch.anomalies)
    stored_a = _insert_new(session, Anomaly, [
        {"device_id": a.device_id, "epoch": a.epoch, "seq": a.seq, "ts_start": a.ts[0],
         "ts_end": a.ts[1], "score": a.score, "threshold": a.threshold,
         "model_name": a.model.name, "model_version": a.model.version,
         "channels": list(a.channels), "detected_at": a.detected_at, "stored_at": committed_at}
        for a in anomalies
    ])
    for a in batch.anomalies:
        _seen(devices(a.device_id), received)
    for device_id, _epoch, _seq in stored_a:
        devices(device_id).anomalies += 1
    marks = _marks_of(batch)
    conflicts = epoch_conflicts(session, marks) + seq_conflicts(session, batch.telemetry,
                                                                 stored_t)
    record_conflicts(session, conflicts, now=received)
    advance_marks(session, marks, now=received)
    session.commit()
    return StoreResult(
        telemetry_batches=len(stored_t), telemetry_readings=readings,
        duplicates=len(batch.telemetry) - len(stored_t) + len(batch.anomalies) - len(stored_a),
        anomalies=len(stored_a), dead_letters=len(dead), committed_at=committed_at,
        touched=tuple(sorted({(k.device_id, k.epoch) for k in marks})),
        conflicts=tuple(sorted({c.device_id for c in conflicts})),
    )


def _apply_reported(device: Device, r: Reported) -> None:
    device.reported_name = r.model.name if r.model else None
    device.reported_version = r.model.version if r.model else None
    device.reported_state = r.state.value
    device.reported_error = r.error
    device.reported_since = r.since
    active = r.active
    if active is None and r.state == ModelState.ACTIVE and r.model is not None:
        active = r.model
    if active is not None:
        device.active_name, device.active_version = active.name, active.version
        device.active_sha256 = active.sha256
    elif r.state == ModelState.ACTIVE:
        device.active_name = device.active_version = device.active_sha256 = None
