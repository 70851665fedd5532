"""Ingest's telemetry rows: inserted without sending a key back per row, counted by the
database, on SQLite and on PostgreSQL; a row whose key row was deleted by hand is kept as it
was, and the store says so."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from cloud_hub.db.ingest_store import store_batch
from cloud_hub.db.tables import TelemetryBatchRow, TelemetryKey
from cloud_hub.mqtt.decoding import decode_batch
from shared.topics import Topics
from tests.cloud_hub.ingest_fakes import telemetry_message
from tests.pg import hub_engine

pytestmark = pytest.mark.hub
TOPICS = Topics()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with hub_engine(request.param, tmp_path) as made:
        yield made


def _store(engine: Engine, *seqs: range) -> int:
    batch, _ = decode_batch(TOPICS, [telemetry_message("pump-1", s) for r in seqs for s in r])
    with Session(engine) as session:
        return store_batch(session, batch).telemetry_batches


def _rows(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(TelemetryBatchRow)).one()


def test_telemetry_rows_are_stored_once_and_a_row_without_its_key_is_kept(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    # A gap after seq 99 holds the stream's watermark there: keys above it are checked in
    # telemetry_keys, and more rows than one SQLite statement takes.
    assert _store(engine, range(100), range(200, 500)) == 400
    assert _rows(engine) == 400
    assert _store(engine, range(200, 500)) == 0, "a resend stores nothing"
    assert _rows(engine) == 400

    with Session(engine) as session:  # key rows lost by hand, their telemetry rows kept
        session.exec(delete(TelemetryKey).where(TelemetryKey.seq >= 490))  # type: ignore[call-overload, arg-type]
        session.commit()
    with caplog.at_level(logging.ERROR, logger="cloud_hub.db.ingest_store"):
        assert _store(engine, range(480, 510)) == 20, "10 keys new again, and 10 new batches"
    assert _rows(engine) == 410, "the 10 rows stored before are kept, not stored twice"
    assert any("10 of 20 telemetry batches new to telemetry_keys were in the telemetry "
               "table already" in r.getMessage() for r in caplog.records), caplog.text
