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

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from cloud_hub.db import pg_bulk, sqlite_many
from cloud_hub.db.drift_tables import DriftSummaryRow
from cloud_hub.db.tables import Anomaly, StreamMark, TelemetryKey
from shared.messages import Ack, StreamAck

__all__ = ["MarkKey", "Stream", "acks_for", "advance_marks", "stored_runs"]


class Stream(StrEnum):
    TELEMETRY = "telemetry"
    ANOMALIES = "anomalies"
    DRIFT = "drift"


@dataclass(frozen=True, order=True)
class MarkKey:
    device_id: str
    epoch: str
    stream: Stream


def _advance_statement(rows: Table, *, arrays: bool = False) -> Any:
    """UPDATE of the watermark of marks, from the rows stored (parameters: b_device, b_epoch,
    b_stream: one mark per execution, or with ``arrays`` every mark at once, PostgreSQL). The
    run that starts at base + 1, base = max(watermark, floor - 1), ends at the first stored seq
    above base without a successor, provided base + 1 itself is stored."""
    marks: Table = StreamMark.__table__  # type: ignore[attr-defined]
    r, n = rows.alias("r"), rows.alias("n")
    base = case((marks.c.watermark > marks.c.floor - 1, marks.c.watermark),
                else_=marks.c.floor - 1)
    same = and_(r.c.device_id == marks.c.device_id, r.c.epoch == marks.c.epoch)
    starts = exists().where(same, r.c.seq == base + 1)
    successor = (select(literal(1)).where(n.c.device_id == r.c.device_id,
                                          n.c.epoch == r.c.epoch, n.c.seq == r.c.seq + 1))
    # OFFSET 0 keeps the successor a lookup by the whole primary key, once per row of the run.
    # Without it PostgreSQL pulls the NOT EXISTS up into an anti join whose inner index scan
    # has only (device_id, epoch) as its condition: every row of the device's stream read per
    # row of the run, so the statement slowed as the table grew (60% of the PostgreSQL hub's
    # ingest time at 180,000 rows; 8 -> 33 ms per 500 marks from 0 to 50,000 rows).
    has_successor = (successor.offset(0) if arrays else successor).exists()
    run_end = (select(r.c.seq).where(same, r.c.seq > base, ~has_successor)
               .order_by(r.c.seq).limit(1).scalar_subquery())
    if arrays:
        k = pg_bulk.unnest_rows(_KEY_COLUMNS, name="k")
        run_start, run_last = k.c.b_run_start, k.c.b_run_end
    else:
        run_start, run_last = bindparam("b_run_start"), bindparam("b_run_end")
    # The run this transaction stored, when it starts right after base and nothing above its
    # end was ever seen (top, raised by the upsert that locked the row): its end is the
    # watermark, found without a look-up (CASE runs the subqueries only when it gets to them).
    stored_run = and_(run_start == base + 1, marks.c.top <= run_last)
    stmt = update(marks).values(watermark=case((stored_run, run_last), (starts, run_end),
                                               else_=base))
    if arrays:
        return stmt.where(marks.c.device_id == k.c.b_device, marks.c.epoch == k.c.b_epoch,
                          marks.c.stream == k.c.b_stream)
    return stmt.where(marks.c.device_id == bindparam("b_device"),
                      marks.c.epoch == bindparam("b_epoch"),
                      marks.c.stream == bindparam("b_stream"))


_KEY_COLUMNS: pg_bulk.Columns = (("b_device", String), ("b_epoch", String), ("b_stream", String),
                                  ("b_run_start", BigInteger), ("b_run_end", BigInteger))
_ROW_TABLES: dict[Stream, Table] = {
    Stream.TELEMETRY: TelemetryKey.__table__,  # type: ignore[attr-defined]
    Stream.ANOMALIES: Anomaly.__table__,  # type: ignore[attr-defined]
    Stream.DRIFT: DriftSummaryRow.__table__,  # type: ignore[attr-defined]
}
_ADVANCE = {s: _advance_statement(t) for s, t in _ROW_TABLES.items()}
_ADVANCE_ARRAYS = {s: _advance_statement(t, arrays=True) for s, t in _ROW_TABLES.items()}
_MARK_COLUMNS: pg_bulk.Columns = (
    ("device_id", String), ("epoch", String), ("stream", String), ("floor", BigInteger),
    ("top", BigInteger), ("watermark", BigInteger), ("first_seen", Float),
    ("updated_at", Float), ("pruned_through", BigInteger))


@functools.cache
def _upsert_statement(dialect: str) -> Any:
    """Insert marks not there yet; raise the floor and top of those that are."""
    table: Table = StreamMark.__table__  # type: ignore[attr-defined]
    if dialect == "postgresql":
        rows = pg_bulk.unnest_select(_MARK_COLUMNS)
        insert: Any = postgresql.insert(table).from_select([n for n, _ in _MARK_COLUMNS], rows)
    else:
        insert = sqlite.insert(table)
    new = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=["device_id", "epoch", "stream"],
        set_={
            "floor": _greatest(table.c.floor, new.floor),
            "top": _greatest(table.c.top, new.top),
            "updated_at": new.updated_at,
        },
    )


def advance_marks(
    session: Session, touched: dict[MarkKey, tuple[int, int]], *, now: float,
    runs: Mapping[MarkKey, tuple[int, int]] | None = None,
) -> None:
    """Upsert the mark of every touched stream (``(floor, top)`` seen in this batch) and
    recompute its watermark, in the session's transaction. ``runs``: per stream, the first
    and last seq of a run of seqs that this transaction stored, every one (see
    :func:`stored_runs`); a watermark just below such a run moves to its end without a
    look-up, unless a seq above it was ever seen."""
    if not touched:
        return
    keys = sorted(touched)
    rows = [
        {"device_id": k.device_id, "epoch": k.epoch, "stream": k.stream.value,
         "floor": touched[k][0], "top": touched[k][1], "watermark": -1, "first_seen": now,
         "updated_at": now, "pruned_through": -1}
        for k in keys
    ]
    dialect = session.get_bind().dialect.name
    pg = dialect == "postgresql"
    # All rows in one statement, in key order: the row locks are taken in that order, before
    # the watermarks are computed by statements that start after them (and so see what
    # another writer committed while this one waited).
    upsert = _upsert_statement(dialect)
    if pg:
        session.execute(upsert, pg_bulk.as_arrays(rows, [n for n, _ in _MARK_COLUMNS]))
    else:
        sqlite_many.executemany(session.connection(), upsert, rows)
    runs = runs or {}
    for stream in Stream:
        params = []
        for k in keys:
            if k.stream is stream:
                start, end = runs.get(k, (None, None))
                params.append({"b_device": k.device_id, "b_epoch": k.epoch,
                               "b_stream": k.stream.value, "b_run_start": start,
                               "b_run_end": end})
        if not params:
            continue
        if pg:
            session.execute(_ADVANCE_ARRAYS[stream],
                            pg_bulk.as_arrays(params, [n for n, _ in _KEY_COLUMNS]))
        else:
            sqlite_many.executemany(session.connection(), _ADVANCE[stream], params)


def stored_runs(stream: Stream, keys: Iterable[tuple[str, str, int]]
                ) -> dict[MarkKey, tuple[int, int]]:
    """Per (device, epoch) of ``keys`` (keys of one stream that a transaction stored, sorted),
    the run of consecutive seqs from the lowest: its first and last seq."""
    runs: dict[MarkKey, tuple[int, int]] = {}
    current: tuple[str, str] | None = None
    first = last = 0
    open_run = False
    for device_id, epoch, seq in keys:
        if (device_id, epoch) != current:
            if current is not None:
                runs[MarkKey(*current, stream)] = (first, last)
            current, first, last, open_run = (device_id, epoch), seq, seq, True
        elif open_run and seq == last + 1:
            last = seq
        else:
            open_run = False
    if current is not None:
        runs[MarkKey(*current, stream)] = (first, last)
    return runs


def _greatest(a: Any, b: Any) -> Any:
    return case((b > a, b), else_=a)


def _acks_statement() -> Any:
    """The marks of (device, epoch) keys given as arrays (PostgreSQL): an expanded ``IN`` of
    up to 400 row values was rendered parameter by parameter on every round of the
    acknowledgement publisher (profiled: ~6% of a PostgreSQL hub's time at batch 10)."""
    m = StreamMark.__table__.c  # type: ignore[attr-defined]
    k = pg_bulk.unnest_rows((("a_device", String), ("a_epoch", String)), name="k")
    return (select(m.device_id, m.epoch, m.stream, m.watermark, m.top)
            .join(k, (m.device_id == k.c.a_device) & (m.epoch == k.c.a_epoch)))


_ACKS_PG = _acks_statement()
_SQLITE_ACK_KEYS = 2048  # (device, epoch) keys per statement: 4,096 of SQLite's 32,766 slots


@functools.lru_cache(maxsize=16)
def _acks_sqlite(keys: int) -> str:
    """SQLite: the marks of ``keys`` (device, epoch) pairs, each looked up in the primary key
    from a VALUES list. A row-value ``IN`` list made SQLite scan the whole table for every
    statement (EXPLAIN QUERY PLAN: ``SCAN stream_marks``; 2.5 ms per 400 keys at 10,000
    marks, and growing with the table): at 10,000 devices the acknowledgement publisher spent
    two thirds of its running time here. This join takes 1.1 ms for the same keys."""
    values = ", ".join(["(?, ?)"] * keys)
    return ("SELECT m.device_id, m.epoch, m.stream, m.watermark, m.top FROM (VALUES "
            f"{values}) AS k CROSS JOIN stream_marks AS m ON m.device_id = k.column1"
            " AND m.epoch = k.column2")


def acks_for(session: Session, device_epochs: Iterable[tuple[str, str]], *,
             at: float) -> list[Ack]:
    """The acknowledgement of each (device, epoch), read from the committed marks."""
    wanted: Sequence[tuple[str, str]] = sorted(set(device_epochs))
    found: dict[tuple[str, str], dict[str, StreamAck]] = {}
    marks: Table = StreamMark.__table__  # type: ignore[attr-defined]
    m = marks.c
    conn = session.connection()
    pg = conn.dialect.name == "postgresql"
    driver = sqlite_many.direct(conn)
    step = 5000 if pg else _SQLITE_ACK_KEYS if driver else 400
    for i in range(0, len(wanted), step):
        part = wanted[i:i + step]
        if pg:  # one statement text for any count, the keys as two arrays (_ACKS_PG)
            rows: Any = session.execute(_ACKS_PG, {"a_device": [d for d, _ in part],
                                                   "a_epoch": [e for _, e in part]})
        elif driver:
            size = max(16, 1 << (len(part) - 1).bit_length())  # a few texts, kept prepared
            padded = [*part, *[part[-1]] * (size - len(part))]  # a key twice: the same rows
            rows = conn.exec_driver_sql(
                _acks_sqlite(size), tuple(v for key in padded for v in key)).all()
        else:
            rows = session.execute(select(m.device_id, m.epoch, m.stream, m.watermark, m.top)
                                   .where(tuple_(m.device_id, m.epoch).in_(part)))
        for device_id, epoch, stream, watermark, top in rows:
            found.setdefault((device_id, epoch), {})[stream] = StreamAck(
                watermark=watermark, top=max(top, watermark))
    # ``drift`` only for a device that sent drift summaries: agents that never do (and those
    # of builds before that stream) refuse an acknowledgement with a field they do not know.
    return [
        Ack(device_id=d, epoch=e, at=at,
            telemetry=streams.get(Stream.TELEMETRY.value, StreamAck()),
            anomalies=streams.get(Stream.ANOMALIES.value, StreamAck()),
            drift=streams.get(Stream.DRIFT.value))
        for (d, e), streams in sorted(found.items())
    ]
