"""Delivery watermarks: per device, epoch and stream, what the hub acknowledges to the device.

Advanced in SQL inside the transaction that stores the rows, from the rows committed in the
database, not from one process's memory: several hub processes sharing a database (each with
part of the streams, ``$share``) advance a device's watermark from rows any of them stored.
Each touched mark row is first upserted (which takes its row lock on PostgreSQL, in key order so
two writers cannot deadlock), then its watermark is recomputed by a second statement, which on
PostgreSQL's READ COMMITTED sees whatever another writer committed while this one waited (on
SQLite, writers are serialised by the database lock anyway).

The watermark is the end of the run of stored seqs that starts at ``max(watermark, floor - 1) +
1``: a device's floor (the lowest seq it still holds) lets the watermark pass seqs the device
dropped on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, exists, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col
from sqlmodel import select as select_model

from cloud_hub.db.tables import Anomaly, StreamMark, TelemetryBatchRow
from shared.messages import Ack, StreamAck

__all__ = ["MarkKey", "Stream", "acks_for", "advance_marks"]


class Stream(StrEnum):
    TELEMETRY = "telemetry"
    ANOMALIES = "anomalies"


_ROWS: dict[Stream, Any] = {Stream.TELEMETRY: TelemetryBatchRow, Stream.ANOMALIES: Anomaly}


@dataclass(frozen=True, order=True)
class MarkKey:
    device_id: str
    epoch: str
    stream: Stream


def _advance_statement(rows: Table) -> Any:
    """UPDATE of one mark's watermark, from the rows stored (parameters: b_device, b_epoch,
    b_stream). The run that starts at base + 1, base = max(watermark, floor - 1), ends at the
    first stored seq above base without a successor, provided base + 1 itself is stored."""
    marks: Table = StreamMark.__table__  # type: ignore[attr-defined]
    r, n = rows.alias("r"), rows.alias("n")
    base = case((marks.c.watermark > marks.c.floor - 1, marks.c.watermark),
                else_=marks.c.floor - 1)
    same = and_(r.c.device_id == marks.c.device_id, r.c.epoch == marks.c.epoch)
    starts = exists().where(same, r.c.seq == base + 1)
    has_successor = exists().where(n.c.device_id == r.c.device_id, n.c.epoch == r.c.epoch,
                                   n.c.seq == r.c.seq + 1)
    run_end = (select(r.c.seq).where(same, r.c.seq > base, ~has_successor)
               .order_by(r.c.seq).limit(1).scalar_subquery())
    return (
        update(marks)
        .where(marks.c.device_id == bindparam("b_device"),
               marks.c.epoch == bindparam("b_epoch"), marks.c.stream == bindparam("b_stream"))
        .values(watermark=case((starts, run_end), else_=base))
    )


_ADVANCE = {
    Stream.TELEMETRY: _advance_statement(TelemetryBatchRow.__table__),  # type: ignore[attr-defined]
    Stream.ANOMALIES: _advance_statement(Anomaly.__table__),  # type: ignore[attr-defined]
}


def advance_marks(
    session: Session, touched: dict[MarkKey, tuple[int, int]], *, now: float
) -> None:
    """Upsert the mark of every touched stream (``(floor, top)`` seen in this batch) and
    recompute its watermark, in the session's transaction."""
    if not touched:
        return
    keys = sorted(touched)
    rows = [
        {"device_id": k.device_id, "epoch": k.epoch, "stream": k.stream.value,
         "floor": touched[k][0], "top": touched[k][1], "watermark": -1, "first_seen": now,
         "updated_at": now}
        for k in keys
    ]
    table: Table = StreamMark.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert: Any = (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table))
    new = insert.excluded
    stmt = insert.on_conflict_do_update(
        index_elements=["device_id", "epoch", "stream"],
        set_={
            "floor": _greatest(table.c.floor, new.floor),
            "top": _greatest(table.c.top, new.top),
            "updated_at": new.updated_at,
        },
    )
    for row in rows:  # one by one, in key order: the row locks are taken in that order
        session.execute(stmt, row)
    for stream in Stream:
        params = [{"b_device": k.device_id, "b_epoch": k.epoch, "b_stream": k.stream.value}
                  for k in keys if k.stream is stream]
        if params:
            session.execute(_ADVANCE[stream], params)


def _greatest(a: Any, b: Any) -> Any:
    return case((b > a, b), else_=a)


def acks_for(session: Session, device_epochs: Iterable[tuple[str, str]], *,
             at: float) -> list[Ack]:
    """The acknowledgement of each (device, epoch), read from the committed marks."""
    wanted: Sequence[tuple[str, str]] = sorted(set(device_epochs))
    found: dict[tuple[str, str], dict[str, StreamAck]] = {}
    for i in range(0, len(wanted), 400):
        part = wanted[i:i + 400]
        stmt = select_model(StreamMark).where(
            tuple_(col(StreamMark.device_id), col(StreamMark.epoch)).in_(part))
        for mark in session.exec(stmt):
            found.setdefault((mark.device_id, mark.epoch), {})[mark.stream] = StreamAck(
                watermark=mark.watermark, top=max(mark.top, mark.watermark))
    return [
        Ack(device_id=d, epoch=e, at=at,
            telemetry=streams.get(Stream.TELEMETRY.value, StreamAck()),
            anomalies=streams.get(Stream.ANOMALIES.value, StreamAck()))
        for (d, e), streams in sorted(found.items())
    ]
