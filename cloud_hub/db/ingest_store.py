"""Write what MQTT ingest decoded: one transaction per batch of messages, duplicates ignored.

Deduplication is by primary key (device_id, seq) per stream. Keys already stored are looked up
first (so duplicates are counted), and the insert itself also ignores conflicts, so two hub
processes sharing a subscription can never store a batch twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Table, select, tuple_
from sqlmodel import Session

from cloud_hub.db.devices import ensure_devices, insert_ignoring_conflicts
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


def pack_floats(values: Sequence[float] | Sequence[Sequence[float]]) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


def _existing_keys(
    session: Session, model: Any, keys: set[tuple[str, int]]
) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    ordered = sorted(keys)
    for i in range(0, len(ordered), 400):
        part = ordered[i : i + 400]
        stmt = select(model.device_id, model.seq).where(
            tuple_(model.device_id, model.seq).in_(part)
        )
        found.update((d, s) for d, s in session.execute(stmt))
    return found


def _fresh(items: Iterable[Any], existing: set[tuple[str, int]]) -> tuple[list[Any], int]:
    seen = set(existing)
    fresh, dups = [], 0
    for item in items:
        key = (item.device_id, item.seq)
        if key in seen:
            dups += 1
            continue
        seen.add(key)
        fresh.append(item)
    return fresh, dups


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

    keys = {(t.device_id, t.seq) for t in batch.telemetry}
    telemetry, dup_t = _fresh(batch.telemetry, _existing_keys(session, TelemetryBatchRow, keys))
    keys = {(a.device_id, a.seq) for a in batch.anomalies}
    anomalies, dup_a = _fresh(batch.anomalies, _existing_keys(session, Anomaly, keys))

    readings = 0
    rows: list[dict[str, Any]] = []
    for t in telemetry:
        rows.append({
            "device_id": t.device_id, "seq": t.seq, "channels": list(t.channels),
            "readings": t.readings, "ts_first": min(t.ts), "ts_last": max(t.ts),
            "ts_blob": pack_floats(t.ts), "values_blob": pack_floats(t.values),
            "stored_at": received,
        })
        readings += t.readings
        device = devices(t.device_id)
        device.telemetry_readings += t.readings
        device.telemetry_batches += 1
        _seen(device, received)
    for t in batch.telemetry:  # duplicates still prove the device is alive
        _seen(devices(t.device_id), received)
    insert_ignoring_conflicts(session, _table(TelemetryBatchRow), rows)

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
    anomaly_rows = []
    for a in anomalies:
        anomaly_rows.append({
            "device_id": a.device_id, "seq": a.seq, "ts_start": a.ts[0], "ts_end": a.ts[1],
            "score": a.score, "threshold": a.threshold, "model_name": a.model.name,
            "model_version": a.model.version, "channels": list(a.channels),
            "detected_at": a.detected_at, "stored_at": committed_at,
        })
        device = devices(a.device_id)
        device.anomalies += 1
        _seen(device, received)
    insert_ignoring_conflicts(session, _table(Anomaly), anomaly_rows)
    session.commit()
    return StoreResult(
        telemetry_batches=len(telemetry), telemetry_readings=readings,
        duplicates=dup_t + dup_a, anomalies=len(anomalies), dead_letters=len(dead),
        committed_at=committed_at,
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
