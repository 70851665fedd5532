"""Read-side queries behind the REST API: devices, telemetry, anomalies, dead letters.

Every listing the API serves is a :class:`Page` cut in SQL (see ``cloud_hub.db.paging``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, literal
from sqlmodel import Session, col, select

from cloud_hub.db.paging import CursorError, Key, Page, keyset_page, primary_key_columns
from cloud_hub.db.tables import Anomaly, DeadLetter, Device, TelemetryBatchRow
from cloud_hub.db.telemetry_read import TelemetryCursor, TelemetrySlice, read_telemetry

__all__ = [
    "TelemetryCursor",
    "TelemetrySlice",
    "count_readings",
    "list_anomalies",
    "list_dead_letters",
    "list_devices",
    "page_devices",
    "read_telemetry",
    "telemetry_summary",
]


def _has_tag(session: Session, tag: str) -> Any:
    """SQL: the device's JSON ``tags`` array holds ``tag`` (SQLite and PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        elements = func.json_array_elements_text(Device.tags).table_valued("value")
    else:
        elements = func.json_each(Device.tags).table_valued("value")
    return select(literal(1)).select_from(elements).where(elements.c.value == tag).exists()


def _devices_query(session: Session, *, group: str | None, tag: str | None,
                   device_ids: list[str] | None) -> Any:
    stmt = select(Device)
    if group is not None:
        stmt = stmt.where(Device.group == group)
    if device_ids is not None:
        stmt = stmt.where(col(Device.device_id).in_(device_ids))
    if tag is not None:
        stmt = stmt.where(_has_tag(session, tag))
    return stmt


def list_devices(
    session: Session, *, group: str | None = None, tag: str | None = None,
    device_ids: list[str] | None = None,
) -> list[Device]:
    """Every matching device (for the hub's own use: rollout targets, training sets)."""
    stmt = _devices_query(session, group=group, tag=tag, device_ids=device_ids)
    return list(session.exec(stmt.order_by(Device.device_id)))


def page_devices(
    session: Session, *, group: str | None = None, tag: str | None = None, limit: int,
    after: Key | None = None,
) -> Page[Device]:
    stmt = _devices_query(session, group=group, tag=tag, device_ids=None)
    return keyset_page(session, stmt, order=[col(Device.device_id)], limit=limit, after=after)


def telemetry_summary(
    session: Session, *, limit: int | None = None, after: Key | None = None,
) -> Page[dict[str, object]]:
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
    if after is not None:
        if len(after) != 1 or not isinstance(after[0], str):
            raise CursorError("the cursor of this listing is one device id")
        stmt = stmt.where(TelemetryBatchRow.device_id > after[0])
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    rows = [
        {
            "device_id": d, "readings": int(r), "batches": int(b), "first_ts": f,
            "last_ts": last, "seq_first": int(s0), "seq_last": int(s1),
            "missing_batches": int(s1) - int(s0) + 1 - int(b),
        }
        for d, r, b, f, last, s0, s1 in session.exec(stmt)
    ]
    if limit is None or len(rows) <= limit:
        return Page(rows, None)
    return Page(rows[:limit], [rows[limit - 1]["device_id"]])


def count_readings(
    session: Session, *, device_ids: list[str] | None, since: float | None = None,
    until: float | None = None,
) -> int:
    """Readings stored in batches that overlap [since, until] (an upper bound of those in it)."""
    stmt = select(func.coalesce(func.sum(TelemetryBatchRow.readings), 0))
    if device_ids is not None:
        stmt = stmt.where(col(TelemetryBatchRow.device_id).in_(device_ids))
    if since is not None:
        stmt = stmt.where(TelemetryBatchRow.ts_last >= since)
    if until is not None:
        stmt = stmt.where(TelemetryBatchRow.ts_first <= until)
    return int(session.exec(stmt).one())


def list_anomalies(
    session: Session, *, device_id: str | None = None, since: float | None = None,
    limit: int = 1000, after: Key | None = None, newest_first: bool = False,
) -> Page[Anomaly]:
    """In the order the hub stored them (``stored_at``, then the key), or the reverse."""
    stmt = select(Anomaly)
    if device_id is not None:
        stmt = stmt.where(Anomaly.device_id == device_id)
    if since is not None:
        stmt = stmt.where(Anomaly.stored_at >= since)
    order = [col(Anomaly.stored_at), *primary_key_columns(Anomaly)]
    return keyset_page(session, stmt, order=order, limit=limit, after=after,
                       descending=newest_first)


def list_dead_letters(session: Session, *, limit: int = 1000,
                      after: Key | None = None) -> Page[DeadLetter]:
    """Newest first."""
    return keyset_page(session, select(DeadLetter), order=[col(DeadLetter.id)], limit=limit,
                       after=after, descending=True)
