"""COPY into PostgreSQL (cloud_hub.db.pg_copy): values arrive as sent, in the column types the
database has, into the schema the engine maps to; a key already there copies nothing and leaves
the transaction usable; the driver's errors come out as SQLAlchemy's, which ingest tells apart
(retry a lost database, dead-letter what it refused)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from sqlalchemy import BigInteger, Column, Integer, LargeBinary, MetaData, String, Table, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, OperationalError
from sqlmodel import Session, select

from cloud_hub.db import pg_copy
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.tables import TelemetryBatchRow
from cloud_hub.mqtt.store_connection import DatabaseUnavailable, RowsRefused, classify
from shared.messages import TelemetryBatch
from tests.pg import pg_schema_engine

pytestmark = [pytest.mark.postgres, pytest.mark.hub]

_COLUMNS = ("id", "small", "doc", "blob", "x", "name")


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with pg_schema_engine() as engine:
        yield engine


def _sample(engine: Engine) -> Table:
    """A table of the column types ingest copies into, in the engine's schema."""
    table = Table("copy_sample", MetaData(), Column("id", BigInteger, primary_key=True),
                  Column("small", Integer), Column("doc", String), Column("blob", LargeBinary),
                  Column("x", String), Column("name", String(64)))
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(text(f'ALTER TABLE "{_schema(engine)}".copy_sample'
                          " ALTER COLUMN doc TYPE json USING doc::json,"
                          " ALTER COLUMN x TYPE double precision USING x::double precision"))
    return table


def _schema(engine: Engine) -> str:
    schema: str = engine.get_execution_options()["schema_translate_map"][None]
    return schema


def test_copied_values_read_back_as_sent_in_the_engines_schema(pg_engine: Engine) -> None:
    table = _sample(pg_engine)  # in a schema of its own, not on the search path
    rows = [(2**40, 7, '["a","b"]', b"\x00\x01" + bytes(range(256)), -3e300, "pump-é"),
            (1, -2, "[]", b"", 0.5, "")]
    with pg_engine.begin() as conn:
        assert pg_copy.copy_new_rows(conn, table, _COLUMNS, rows) == 2
    with pg_engine.connect() as conn:
        got = conn.execute(text(f'SELECT id, small, doc::text, json_typeof(doc), blob, x, name'
                                f' FROM "{_schema(pg_engine)}".copy_sample ORDER BY id DESC')).all()
    assert [tuple(r) for r in got] == [
        (2**40, 7, '["a","b"]', "array", b"\x00\x01" + bytes(range(256)), -3e300, "pump-é"),
        (1, -2, "[]", "array", b"", 0.5, "")]


def test_a_key_already_there_copies_nothing_and_the_transaction_goes_on(
        pg_engine: Engine) -> None:
    table = _sample(pg_engine)
    with pg_engine.begin() as conn:
        assert pg_copy.copy_new_rows(conn, table, _COLUMNS, [(5, 1, "{}", b"", 1.0, "a")]) == 1
    with pg_engine.begin() as conn:
        conn.execute(table.insert().values(id=6, small=1, name="before"))
        assert pg_copy.copy_new_rows(conn, table, _COLUMNS, [
            (7, 1, "{}", b"", 1.0, "new"), (5, 2, "{}", b"", 2.0, "again")]) is None
        conn.execute(table.insert().values(id=8, small=1, name="after"))
    with pg_engine.connect() as conn:
        got = conn.execute(select(table.c.id, table.c.name).order_by(table.c.id)).all()
    assert [tuple(r) for r in got] == [(5, "a"), (6, "before"), (8, "after")]


def test_a_column_the_table_lacks_is_named(pg_engine: Engine) -> None:
    table = _sample(pg_engine)
    with pg_engine.begin() as conn, pytest.raises(RuntimeError, match="has no column ts_blob"):
        pg_copy.copy_new_rows(conn, table, ("id", "ts_blob"), [(1, b"")])


def test_ingest_stores_copied_telemetry_that_reads_back(pg_engine: Engine) -> None:
    batches = [TelemetryBatch(device_id="pump-1", epoch="0123456789abcdef", seq=s,
                              channels=["temp", "vib"], ts=[1.7e9 + s, 1.7e9 + s + 0.5],
                              values=[[20.0 + s, 0.25], [21.5, -1.0]]) for s in range(3)]
    with Session(pg_engine) as session:
        assert store_batch(session, IngestBatch(telemetry=list(batches))).telemetry_batches == 3
    with Session(pg_engine) as session:
        rows = session.exec(select(TelemetryBatchRow).order_by(TelemetryBatchRow.seq)).all()
    assert [(r.seq, r.channels, r.readings, r.ts_first, r.ts_last) for r in rows] == [
        (s, ["temp", "vib"], 2, 1.7e9 + s, 1.7e9 + s + 0.5) for s in range(3)]
    assert [struct.unpack("<4d", r.values_blob) for r in rows] == [
        (20.0 + s, 0.25, 21.5, -1.0) for s in range(3)]


def test_a_lost_connection_is_a_database_to_retry(pg_engine: Engine) -> None:
    table = _sample(pg_engine)
    with pg_engine.begin() as conn:  # the column types read: the next call goes straight to COPY
        pg_copy.copy_new_rows(conn, table, _COLUMNS, [(0, 1, "{}", b"", 1.0, "a")])
    with pg_engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # the transaction has begun on this backend
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with pg_engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(OperationalError) as caught:
            pg_copy.copy_new_rows(conn, table, _COLUMNS, [(1, 1, "{}", b"", 1.0, "a")])
        assert caught.value.connection_invalidated
        assert isinstance(classify(caught.value), DatabaseUnavailable)


def test_a_value_the_column_refuses_is_rows_refused(pg_engine: Engine) -> None:
    table = _sample(pg_engine)
    with pg_engine.connect() as conn, pytest.raises(DataError) as caught:
        pg_copy.copy_new_rows(conn, table, _COLUMNS, [(1, 1, "{}", b"", 1.0, "x" * 65)])
    assert "value too long" in str(caught.value)
    assert isinstance(classify(caught.value), RowsRefused)
