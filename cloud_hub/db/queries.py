"""Read-side queries behind the REST API: devices, telemetry, anomalies, dead letters.

Every listing the API serves is a :class:`Page` cut in SQL (see ``cloud_hub.db.paging``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, literal
from sqlmodel import Session, col, select

from cloud_hub.db.paging import CursorError, Key, Page, keyset_page, primary_key_columns
from cloud_hub.db.tables import Anomaly, DeadLetter, Device, StreamMark, TelemetryBatchRow
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
    """Per device: readings and batches stored, time range, and batches missing.

    seq is contiguous from 0 in each epoch of a device's stream, so every seq below the highest
    stored that is not stored is a batch that never arrived: dropped by the device's outbox
    policy, or lost on the way (also at the start of a stream, and in every epoch, not only the
    latest). ``seq_first``/``seq_last`` are those of the device's latest epoch."""
    devices = (select(TelemetryBatchRow.device_id).distinct()
               .order_by(TelemetryBatchRow.device_id))
    if after is not None:
        if len(after) != 1 or not isinstance(after[0], str):
            raise CursorError("the cursor of this listing is one device id")
        devices = devices.where(TelemetryBatchRow.device_id > after[0])
    if limit is not None:
        devices = devices.limit(limit + 1)
    wanted = list(session.exec(devices))
    more = limit is not None and len(wanted) > limit
    wanted = wanted[:limit] if limit is not None else wanted
    stmt = (
        select(  # type: ignore[call-overload]
            TelemetryBatchRow.device_id,
            TelemetryBatchRow.epoch,
            func.sum(TelemetryBatchRow.readings),
            func.count(),
            func.min(TelemetryBatchRow.ts_first),
            func.max(TelemetryBatchRow.ts_last),
            func.min(TelemetryBatchRow.seq),
            func.max(TelemetryBatchRow.seq),
            func.max(TelemetryBatchRow.stored_at),
        )
        .where(col(TelemetryBatchRow.device_id).in_(wanted))
        .group_by(TelemetryBatchRow.device_id, TelemetryBatchRow.epoch)
        .order_by(TelemetryBatchRow.device_id)
    )
    pruned = dict(((d, e), int(p)) for d, e, p in session.exec(
        select(StreamMark.device_id, StreamMark.epoch, StreamMark.pruned_through)
        .where(col(StreamMark.device_id).in_(wanted), StreamMark.stream == "telemetry",
               StreamMark.pruned_through >= 0)))
    out: dict[str, dict[str, Any]] = {}
    latest: dict[str, float] = {}
    for d, _epoch, r, b, f, last, s0, s1, stored in session.exec(stmt):
        row = out.setdefault(d, {"device_id": d, "readings": 0, "batches": 0, "first_ts": f,
                                 "last_ts": last, "seq_first": int(s0), "seq_last": int(s1),
                                 "missing_batches": 0, "epochs": 0})
        row["readings"] += int(r)
        row["batches"] += int(b)
        row["first_ts"] = min(row["first_ts"], f)
        row["last_ts"] = max(row["last_ts"], last)
        # seqs retention deleted (up to pruned_through) were stored: not missing
        below = min(pruned.get((d, _epoch), -1), int(s0) - 1) + 1
        row["missing_batches"] += int(s1) + 1 - int(b) - below
        row["epochs"] += 1
        if stored >= latest.get(d, float("-inf")):
            latest[d] = stored
            row["seq_first"], row["seq_last"] = int(s0), int(s1)
    rows: list[dict[str, object]] = [out[d] for d in wanted if d in out]
    return Page(rows, [wanted[-1]] if more else None)


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
