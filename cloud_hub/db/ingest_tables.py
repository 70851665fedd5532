"""The telemetry and anomaly tables as ingest writes them: plain column types, statements built
once.

The SQLModel tables (:mod:`cloud_hub.db.tables`) declare ``channels`` as JSON, which makes
SQLAlchemy run ``json.dumps`` on every row; ingest passes the JSON text itself (one encoding
per distinct channel list, cached) through these mirrors of the same tables. Their column names
and the table names are checked against the SQLModel tables at import.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    cast,
    exists,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType, TypeDecorator

from cloud_hub.db import pg_bulk, pg_copy
from cloud_hub.db.tables import Anomaly, StreamMark, TelemetryBatchRow, TelemetryKey

__all__ = ["anomalies", "channels_json", "column_names", "insert_counted", "insert_keys",
           "insert_new", "insert_rows", "telemetry", "telemetry_keys"]

_metadata = MetaData()


class _JsonText(TypeDecorator[str]):
    """JSON text passed through as it is: no ``json.dumps`` per row, and no cast to VARCHAR
    (PostgreSQL takes an untyped literal into a json column, not a varchar)."""

    impl = NullType
    cache_ok = True


class _Bytes(LargeBinary):
    """Bytes passed to the driver as they are: LargeBinary wraps every value in the driver's
    Binary, one Python call per blob (2 x 4,000 per batch of 4,000 telemetry rows on
    PostgreSQL, where the array dumper takes bytes itself)."""

    def bind_processor(self, dialect: Any) -> None:
        return None


_KEY = (("device_id", String), ("epoch", String), ("seq", BigInteger))
_TELEMETRY_KEYS: pg_bulk.Columns = (
    *_KEY, ("readings", Integer), ("ts_first", Float), ("ts_last", Float))
_TELEMETRY: pg_bulk.Columns = (
    *_KEY, ("channels", String), ("readings", Integer), ("ts_first", Float), ("ts_last", Float),
    ("ts_blob", _Bytes), ("values_blob", _Bytes), ("stored_at", Float))
_ANOMALIES: pg_bulk.Columns = (
    *_KEY, ("ts_start", Float), ("ts_end", Float), ("score", Float), ("threshold", Float),
    ("model_name", String), ("model_version", Integer), ("channels", String),
    ("detected_at", Float), ("stored_at", Float))


def _mirror(model: Any, columns: pg_bulk.Columns) -> Table:
    key = {c.name for c in model.__table__.primary_key.columns}
    return Table(model.__tablename__, _metadata, *[
        Column(n, _JsonText() if n == "channels" else t, primary_key=n in key)
        for n, t in columns])


telemetry_keys = _mirror(TelemetryKey, _TELEMETRY_KEYS)
telemetry = _mirror(TelemetryBatchRow, _TELEMETRY)
anomalies = _mirror(Anomaly, _ANOMALIES)
_KEY_COLUMNS = tuple(n for n, _ in _TELEMETRY_KEYS)
_COLUMNS = {telemetry_keys.name: _TELEMETRY_KEYS, telemetry.name: _TELEMETRY,
            anomalies.name: _ANOMALIES}


def _check_mirror(mirror: Table, model: Any) -> None:
    real = {c.name for c in model.__table__.columns}
    missing = {c.name for c in mirror.columns} - real
    if missing:  # a renamed column must be renamed here too
        raise RuntimeError(f"ingest's {mirror.name} names columns the table lacks: {missing}")


_check_mirror(telemetry_keys, TelemetryKey)
_check_mirror(telemetry, TelemetryBatchRow)
_check_mirror(anomalies, Anomaly)


@functools.lru_cache(maxsize=4096)
def _channels_json(channels: tuple[str, ...]) -> str:
    return msgspec.json.encode(list(channels)).decode()


def channels_json(channels: Sequence[str]) -> str:
    """The JSON text of a channel list (as the JSON column stores it)."""
    return _channels_json(tuple(channels))


# A telemetry key at or below its stream's watermark was stored once already: retention may
# have deleted the key with its day (a resend that comes after that must not be stored again
# and counted twice), so the key insert skips those seqs in the same statement.
_MARKS: Table = StreamMark.__table__  # type: ignore[attr-defined]
_DELIVERED_SQLITE = (" WHERE NOT EXISTS (SELECT 1 FROM stream_marks AS m WHERE m.device_id ="
                     " u.column1 AND m.epoch = u.column2 AND m.stream = 'telemetry'"
                     " AND m.watermark >= u.column3)")


@functools.cache
def _insert_new(dialect: str, table: Table, *, returning: bool = True) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING`` the key of each row stored (without
    ``RETURNING`` if not ``returning``): on PostgreSQL from arrays (:mod:`cloud_hub.db.pg_bulk`),
    elsewhere as many rows of VALUES."""
    if dialect == "postgresql":
        columns = _COLUMNS[table.name]
        rows = pg_bulk.unnest_select(columns, casts={"channels": lambda c: cast(c, JSON)})
        if table.name == telemetry_keys.name:
            derived = rows.selected_columns
            rows = rows.where(~exists().where(
                _MARKS.c.device_id == derived.device_id, _MARKS.c.epoch == derived.epoch,
                _MARKS.c.stream == "telemetry", _MARKS.c.watermark >= derived.seq))
        insert: Any = postgresql.insert(table).from_select([n for n, _ in columns], rows)
    else:
        insert = sqlite.insert(table)
    insert = insert.on_conflict_do_nothing()
    return insert.returning(table.c.device_id, table.c.epoch, table.c.seq) if returning else insert


@functools.cache
def _insert_plain(dialect: str, table: Table) -> Any:
    # SQLAlchemy keeps the driver's rowcount for UPDATE and DELETE only, unless asked to.
    return _insert_new(dialect, table, returning=False).execution_options(preserve_rowcount=True)


def column_names(table: Table) -> tuple[str, ...]:
    """The order of the values in a row given to :func:`insert_rows`."""
    return tuple(n for n, _ in _COLUMNS[table.name])


# SQLite: rows per INSERT … VALUES statement (11 columns x 250 rows stays far below SQLite's
# 32,766 parameters); statements of a few distinct sizes, so sqlite3 keeps them prepared.
_SQLITE_ROWS = 250


@functools.cache
def _sqlite_insert(table_name: str, columns: tuple[str, ...], rows: int,
                   returning: bool = True) -> str:
    one = "(" + ", ".join("?" * len(columns)) + ")"
    values = ", ".join([one] * rows)
    back = " RETURNING device_id, epoch, seq" if returning else ""
    if table_name == telemetry_keys.name:  # see _MARKS; columns 1-3 are the key
        assert columns[:3] == ("device_id", "epoch", "seq")
        return (f"INSERT INTO {table_name} ({', '.join(columns)}) SELECT * FROM (VALUES "
                f"{values}) AS u{_DELIVERED_SQLITE} ON CONFLICT DO NOTHING{back}")
    return (f"INSERT INTO {table_name} ({', '.join(columns)}) VALUES {values}"
            f" ON CONFLICT DO NOTHING{back}")


def insert_rows(conn: Connection, table: Table, rows: Sequence[tuple[Any, ...]]
                ) -> set[tuple[str, str, int]]:
    """Insert ``rows`` (tuples in :func:`column_names` order, in key order), skipping keys
    already stored; the keys stored. On SQLite, plain driver SQL with the values of many rows
    in one statement: SQLAlchemy's compiled insert processed every parameter of every row in
    Python (profiled: about a quarter of storing a batch)."""
    return {(d, e, int(s)) for result in _execute(conn, table, rows, returning=True)
            for d, e, s in result}


def insert_keys(conn: Connection, keys: Sequence[tuple[Any, ...]],
                watermarks: Mapping[tuple[str, str, str], int]) -> set[tuple[str, str, int]]:
    """Store the telemetry ``keys`` (rows of :data:`telemetry_keys`, unique, in key order)
    that are new; the keys stored. ``watermarks``: the telemetry watermark of each stream as
    this transaction read it; a key at or below it was stored once already (see ``_MARKS``).

    On PostgreSQL the keys above the watermarks are copied (:mod:`cloud_hub.db.pg_copy`): in
    a stream sent once, every one is new. If one was stored already (a resend, or a stream
    another hub advanced since the read), nothing is copied and they go through
    :func:`insert_rows`, which skips the keys stored and checks the watermarks again."""
    if keys and conn.dialect.name == "postgresql":
        fresh = [k for k in keys
                 if k[2] > watermarks.get((k[0], k[1], "telemetry"), -1)]
        if not fresh or pg_copy.copy_new_rows(conn, telemetry_keys, _KEY_COLUMNS,
                                              fresh) is not None:
            return {(d, e, s) for d, e, s, *_ in fresh}
    return insert_rows(conn, telemetry_keys, keys)


def insert_counted(conn: Connection, table: Table, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert ``rows`` as :func:`insert_rows` does, for rows whose keys are known to be new
    (their key rows were just stored): how many were inserted, with no key sent back per row.
    On PostgreSQL by COPY (:mod:`cloud_hub.db.pg_copy`), and by ``INSERT … ON CONFLICT DO
    NOTHING`` if a row's key was there after all. The insert sends no key back: measured on
    PostgreSQL with 4,000 telemetry rows, 11.4-12.2 ms of the client's CPU, against 16.5-17.7
    with ``RETURNING`` and the set of keys built from it."""
    if rows and conn.dialect.name == "postgresql":
        copied = pg_copy.copy_new_rows(conn, table, column_names(table), rows)
        if copied is not None:
            return copied
    return sum(int(result.rowcount) for result in _execute(conn, table, rows, returning=False))


def _execute(conn: Connection, table: Table, rows: Sequence[tuple[Any, ...]], *,
             returning: bool) -> Iterator[Any]:
    """The results of the statements that insert ``rows`` (none for no rows): one on
    PostgreSQL (columns as arrays), one per ``_SQLITE_ROWS`` rows on SQLite."""
    if not rows:
        return
    dialect = conn.dialect.name
    names = column_names(table)
    if dialect != "sqlite":
        stmt = _insert_new(dialect, table) if returning else _insert_plain(dialect, table)
        if dialect == "postgresql":
            yield conn.execute(stmt, dict(zip(names, (list(c) for c in zip(*rows, strict=True)),
                                              strict=True)))
        else:
            yield conn.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])
        return
    for i in range(0, len(rows), _SQLITE_ROWS):
        part = rows[i:i + _SQLITE_ROWS]
        flat = tuple(v for row in part for v in row)
        yield conn.exec_driver_sql(_sqlite_insert(table.name, names, len(part), returning), flat)


def insert_new(conn: Connection, table: Table, rows: list[dict[str, Any]]
               ) -> set[tuple[str, str, int]]:
    """Insert ``rows`` (in key order), skipping keys already stored; the keys stored."""
    if not rows:
        return set()
    dialect = conn.dialect.name
    stmt = _insert_new(dialect, table)
    if dialect == "postgresql":
        result = conn.execute(stmt, pg_bulk.as_arrays(rows, [n for n, _ in _COLUMNS[table.name]]))
    else:
        result = conn.execute(stmt, rows)
    return {(d, e, int(s)) for d, e, s in result}
