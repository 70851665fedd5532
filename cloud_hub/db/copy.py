"""Copy a hub's whole database into an empty one: how a hub moves from SQLite to PostgreSQL.

Every table the hub declares is copied row for row, in the order of their foreign keys, in one
transaction on the target: either all of it lands or nothing does. What is copied keeps every
invariant ingest and maintenance rest on, because nothing is recomputed:

- the telemetry rows *and* their keys (``telemetry_keys``), so a batch a device sends again
  after the move is still recognised and stored once;
- the streams' marks, so devices are acknowledged from where they were, and ask to resend
  nothing the source held;
- the rollups and the maintenance marks, so nothing is folded twice;
- models with their TFLite bytes, releases, signing keys' public halves, enrollments, API keys
  and console sessions.

``job_leases``, ``hub_processes`` and ``enrollment_jobs`` are not copied: they say which
processes of the *source* run singleton jobs, ran at all, and ran bulk enrollments (whose
sealed bundles are minutes-lived), and the target's hubs take their leases and write their
rows afresh. A lease still held on the source means a hub is
running on it, and the copy is refused (:class:`CopyRefused`): rows stored during the copy
would be missed.

Before the rows, the target is brought to this code's schema, and on PostgreSQL a day partition
is made for each UTC day of raw telemetry the retention still keeps; older rows land in the
default partition, where retention deletes them. After the rows, PostgreSQL's id sequences are
moved past the highest id copied, and every table's count is compared with the source's before
the commit.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, Table, cast, func, select, text
from sqlalchemy.engine import Connection, Engine, Result
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from cloud_hub.db import migrate, partitions, pg_copy
from cloud_hub.db.engine import driver_message
from cloud_hub.db.ops_tables import EnrollmentJobRecord, HubProcessRecord, JobLease
from cloud_hub.db.tables import TelemetryBatchRow

__all__ = ["BATCH_ROWS", "CopyError", "CopyRefused", "CopyResult", "copy_database",
           "copied_tables"]

BATCH_ROWS = 5_000
Progress = Callable[[str, int, int], None]  # table, rows copied so far in it, its rows


class CopyRefused(RuntimeError):
    """The copy cannot start: the source or the target is not in a state to copy."""


class CopyError(RuntimeError):
    """The copy failed part-way; nothing was committed to the target."""


@dataclass(frozen=True)
class CopyResult:
    rows: dict[str, int]  # table -> rows copied
    partitions_made: list[str]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.rows.values())


_NOT_COPIED = {JobLease.__tablename__, HubProcessRecord.__tablename__,
               EnrollmentJobRecord.__tablename__}


def copied_tables() -> list[Table]:
    """The tables copied, parents before children."""
    return [t for t in SQLModel.metadata.sorted_tables if t.name not in _NOT_COPIED]


def copy_database(source: Engine, target: Engine, *, keep_raw_days: float,
                  now: float | None = None, on_progress: Progress | None = None,
                  batch_rows: int = BATCH_ROWS) -> CopyResult:
    """Copy every row of ``source`` into ``target`` (see the module's text).

    Raises :class:`CopyRefused` before any row is copied when the source is not at this
    code's schema or a hub holds a lease on it, or when the target holds any row (the target
    may have been given this code's schema by then); :class:`CopyError` when a row cannot be
    written (no row is committed then)."""
    started = time.monotonic()
    now = time.time() if now is None else now
    _check_source(source, now)
    migrate.upgrade(target)
    tables = copied_tables()
    with source.connect() as src:
        totals = _counts(src, tables)
        days = _telemetry_days(src, now=now, keep_raw_days=keep_raw_days)
    with target.connect() as dst:
        held = {name: n for name, n in _counts(dst, tables).items() if n}
    if held:
        listed = ", ".join(f"{name} ({n} rows)" for name, n in held.items())
        raise CopyRefused(f"the target database is not empty: {listed}. Copy into an empty "
                          "database, so that nothing in it is mixed with or hidden by the copy")
    made = partitions.make_days(target, days)
    try:
        with source.connect() as src, target.begin() as dst:
            for table in tables:
                _copy_table(src, dst, table, totals[table.name], on_progress, batch_rows)
            _advance_sequences(dst, tables)
            _compare_counts(dst, tables, totals)
    except DBAPIError as exc:
        raise CopyError(f"nothing was copied: {driver_message(exc)}") from exc
    return CopyResult(rows=totals, partitions_made=made, seconds=time.monotonic() - started)


def _check_source(source: Engine, now: float) -> None:
    shown = source.url.render_as_string(hide_password=True)
    found = migrate.state(source)
    if not found.has_tables:
        raise CopyRefused(f"the source {shown} holds no hub tables: is it the right database?")
    if not found.up_to_date:
        raise CopyRefused(
            f"the source {shown} is at schema revision {found.current or 'none'}, and this hub's "
            f"is {found.head}: bring it to this hub's first (EDGELOOP_DATABASE_URL=<source> "
            "cloud-hub db upgrade, or start this hub's version on it once), then copy")
    leases: Table = JobLease.__table__  # type: ignore[attr-defined]
    with source.connect() as conn:
        first = conn.execute(select(leases).where(leases.c.expires_at > now)
                             .order_by(leases.c.expires_at.desc())).first()
    if first is not None:
        raise CopyRefused(
            f"a hub is running on the source {shown}: {first.holder} holds the lease "
            f"{first.name!r} for {first.expires_at - now:.0f} s more. Stop every hub on it "
            "first: what they store during the copy would not be copied")


def _telemetry_days(src: Connection, *, now: float, keep_raw_days: float) -> list[dt.date]:
    """The UTC days of the source's raw telemetry that retention still keeps, up to two days
    ahead (a day partition each on PostgreSQL)."""
    ts = TelemetryBatchRow.__table__.c.ts_first  # type: ignore[attr-defined]
    day_of = (func.floor(ts / partitions.DAY) if src.dialect.name == "postgresql"
              else cast(ts / partitions.DAY, Integer))  # ts_first >= 0: truncation is floor
    lowest = (now - (keep_raw_days + 1) * partitions.DAY) / partitions.DAY
    highest = now / partitions.DAY + 2
    found = src.execute(select(cast(day_of, Float).label("d")).distinct()
                        .where(ts >= 0)).scalars().all()
    epoch = dt.date(1970, 1, 1)
    return [epoch + dt.timedelta(days=int(d)) for d in found if lowest <= d <= highest]


def _copy_table(src: Connection, dst: Connection, table: Table, total: int,
                on_progress: Progress | None, batch_rows: int) -> None:
    done = 0
    if on_progress is not None:
        on_progress(table.name, done, total)
    if total == 0:
        return
    raw = src.dialect.name == "sqlite" and dst.dialect.name == "postgresql"
    key_at = [i for i, c in enumerate(table.columns) if c.primary_key]
    result = _read(src, table, raw=raw, batch_rows=batch_rows)
    while part := result.fetchmany(batch_rows):
        rows = [tuple(row) for row in part]
        try:
            _write(dst, table, rows, raw=raw)
        except DBAPIError as exc:
            first, last = (_key(row, key_at) for row in (rows[0], rows[-1]))
            raise CopyError(f"nothing was copied: table {table.name}, rows {first} .. {last}: "
                            f"{driver_message(exc)}") from exc
        done += len(rows)
        if on_progress is not None:
            on_progress(table.name, done, total)


def _read(src: Connection, table: Table, *, raw: bool, batch_rows: int) -> Result[Any]:
    """The table's rows in key order: as the tables' types give them back, or with ``raw``
    as the driver gives them. SQLite's raw values are what PostgreSQL's binary COPY takes for
    each column (JSON as its text, booleans as 0 and 1): from SQLite into PostgreSQL, rows go
    by COPY, four times faster than read through the types and inserted (docs/scaling.md)."""
    if raw:
        quote = src.dialect.identifier_preparer.quote
        names = ", ".join(quote(c.name) for c in table.columns)
        order = ", ".join(quote(c.name) for c in table.primary_key.columns)
        return src.exec_driver_sql(f"SELECT {names} FROM {quote(table.name)} ORDER BY {order}")
    ordered = select(table).order_by(*table.primary_key.columns)
    return src.execution_options(stream_results=True, yield_per=batch_rows).execute(ordered)


def _write(dst: Connection, table: Table, rows: list[tuple[Any, ...]], *, raw: bool) -> None:
    if raw:
        columns = tuple(c.name for c in table.columns)
        if pg_copy.copy_new_rows(dst, table, columns, rows) is None:
            raise CopyError(f"nothing was copied: table {table.name} already holds a key of "
                            "the rows copied (was something writing to the target?)")
        return
    names = [c.key for c in table.columns]
    dst.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in rows])


def _key(row: tuple[Any, ...], key_at: Sequence[int]) -> str:
    return "(" + ", ".join(repr(row[i]) for i in key_at) + ")"


def _advance_sequences(dst: Connection, tables: Sequence[Table]) -> None:
    """On PostgreSQL, move each serial id's sequence past the highest id copied (explicit ids
    do not advance it, and the next insert would collide)."""
    if dst.dialect.name != "postgresql":
        return
    for table in tables:
        keys = list(table.primary_key.columns)
        if len(keys) != 1 or keys[0].autoincrement is False:
            continue
        name = partitions.qualified(dst, table.name)
        column = dst.dialect.identifier_preparer.quote(keys[0].name)
        sequence = dst.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                               {"t": name, "c": keys[0].name}).scalar()
        if sequence is None:
            continue
        dst.execute(text(f"SELECT setval(:s, (SELECT max({column}) FROM {name}), true) "
                         f"WHERE EXISTS (SELECT 1 FROM {name})"), {"s": sequence})


def _counts(conn: Connection, tables: Sequence[Table]) -> dict[str, int]:
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in tables}


def _compare_counts(dst: Connection, tables: Sequence[Table], totals: dict[str, int]) -> None:
    for name, landed in _counts(dst, tables).items():
        if landed != totals[name]:
            raise CopyError(f"nothing was copied: table {name} holds {landed} rows in the "
                            f"target and {totals[name]} in the source (was a hub writing to the "
                            "source?)")
