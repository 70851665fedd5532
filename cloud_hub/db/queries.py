"""Read-side queries behind the REST API: devices, telemetry, anomalies, dead letters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import func
from sqlmodel import Session, col, select

from cloud_hub.db.tables import Anomaly, DeadLetter, Device, TelemetryBatchRow

__all__ = [
    "TelemetrySlice",
    "list_anomalies",
    "list_dead_letters",
    "list_devices",
    "read_telemetry",
    "telemetry_summary",
]


def list_devices(
    session: Session, *, group: str | None = None, tag: str | None = None,
    device_ids: list[str] | None = None,
) -> list[Device]:
    stmt = select(Device).order_by(Device.device_id)
    if group is not None:
        stmt = stmt.where(Device.group == group)
    if device_ids is not None:
        stmt = stmt.where(col(Device.device_id).in_(device_ids))
    devices = list(session.exec(stmt))
    if tag is not None:
        devices = [d for d in devices if tag in (d.tags or [])]
    return devices


@dataclass
class TelemetrySlice:
    """Readings of one device, time-ordered, restricted to ``channels``."""

    device_id: str
    channels: list[str]
    ts: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    batches: int


def read_telemetry(
    session: Session, *, device_id: str, since: float | None = None, until: float | None = None,
    limit: int | None = None, channels: list[str] | None = None,
) -> TelemetrySlice:
    """Unpack stored batches; rows whose channels lack a requested channel are skipped."""
    stmt = select(TelemetryBatchRow).where(TelemetryBatchRow.device_id == device_id)
    if since is not None:
        stmt = stmt.where(TelemetryBatchRow.ts_last >= since)
    if until is not None:
        stmt = stmt.where(TelemetryBatchRow.ts_first <= until)
    stmt = stmt.order_by(col(TelemetryBatchRow.ts_first), col(TelemetryBatchRow.seq))
    ts_parts: list[npt.NDArray[np.float64]] = []
    value_parts: list[npt.NDArray[np.float64]] = []
    wanted = channels
    batches = 0
    for row in session.exec(stmt):
        if wanted is None:
            wanted = list(row.channels)
        try:
            cols = [row.channels.index(c) for c in wanted]
        except ValueError:
            continue
        ts = np.frombuffer(row.ts_blob, dtype="<f8")
        values = np.frombuffer(row.values_blob, dtype="<f8").reshape(len(ts), len(row.channels))
        keep = np.ones(len(ts), dtype=bool)
        if since is not None:
            keep &= ts >= since
        if until is not None:
            keep &= ts <= until
        ts_parts.append(ts[keep])
        value_parts.append(values[keep][:, cols])
        batches += 1
    width = len(wanted or [])
    if ts_parts:
        ts_all = np.concatenate(ts_parts)
        values_all = np.concatenate(value_parts)
        order = np.argsort(ts_all, kind="stable")
        ts_all, values_all = ts_all[order], values_all[order]
    else:
        ts_all, values_all = np.zeros(0), np.zeros((0, width))
    if limit is not None:
        ts_all, values_all = ts_all[:limit], values_all[:limit]
    return TelemetrySlice(device_id, list(wanted or []), ts_all, values_all, batches)


def telemetry_summary(session: Session) -> list[dict[str, object]]:
    """Per device: readings and batches stored, time range, and batches missing between the
    first and last seq stored (seq is contiguous per device, so a gap is a batch that never
    arrived: dropped by the device's outbox policy, or lost on the way)."""
    stmt = (
        select(  # type: ignore[call-overload]
            TelemetryBatchRow.device_id,
            func.sum(TelemetryBatchRow.readings),
            func.count(),
            func.min(TelemetryBatchRow.ts_first),
            func.max(TelemetryBatchRow.ts_last),
            func.min(TelemetryBatchRow.seq),
            func.max(TelemetryBatchRow.seq),
        )
        .group_by(TelemetryBatchRow.device_id)
        .order_by(TelemetryBatchRow.device_id)
    )
    return [
        {
            "device_id": d, "readings": int(r), "batches": int(b), "first_ts": f,
            "last_ts": last, "seq_first": int(s0), "seq_last": int(s1),
            "missing_batches": int(s1) - int(s0) + 1 - int(b),
        }
        for d, r, b, f, last, s0, s1 in session.exec(stmt)
    ]


def list_anomalies(
    session: Session, *, device_id: str | None = None, since: float | None = None,
    limit: int = 1000,
) -> list[Anomaly]:
    stmt = select(Anomaly)
    if device_id is not None:
        stmt = stmt.where(Anomaly.device_id == device_id)
    if since is not None:
        stmt = stmt.where(Anomaly.stored_at >= since)
    stmt = stmt.order_by(col(Anomaly.stored_at), col(Anomaly.device_id), col(Anomaly.seq))
    return list(session.exec(stmt.limit(limit)))


def list_dead_letters(session: Session, *, limit: int = 1000) -> list[DeadLetter]:
    stmt = select(DeadLetter).order_by(col(DeadLetter.id).desc()).limit(limit)
    return list(session.exec(stmt))
