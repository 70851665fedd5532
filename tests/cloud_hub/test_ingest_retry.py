"""Ingest's retry loop, driven directly: a database that is down is waited for, and rows the
database refuses are found by halving the batch, not by one commit per message."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, func, select

from cloud_hub.db.engine import make_engine
from cloud_hub.db.enrollments import record_enrollment
from cloud_hub.db.ingest_store import IngestBatch, StoreResult, store_batch
from cloud_hub.db.tables import DeadLetter, TelemetryBatchRow
from cloud_hub.mqtt.ingest import MqttIngest
from cloud_hub.mqtt.store_connection import DatabaseUnavailable, RowsRefused, classify
from shared.topics import Topics
from tests.cloud_hub.helpers import wait_for
from tests.cloud_hub.ingest_fakes import FakeConnection as _Connection
from tests.cloud_hub.ingest_fakes import FakeMessage, telemetry_message

pytestmark = pytest.mark.hub
TOPICS = Topics()
POISON = 13  # the seq the stand-in database refuses


def _messages(n: int) -> list[FakeMessage]:
    return [telemetry_message("pump-1", i) for i in range(n)]


def test_failures_are_typed_by_what_to_do_about_them() -> None:
    down = OperationalError("INSERT", {}, Exception("database is locked"))
    refused = IntegrityError("INSERT", {}, Exception("constraint failed"))
    assert isinstance(classify(down), DatabaseUnavailable)
    assert isinstance(classify(refused), RowsRefused)
    assert isinstance(classify(OverflowError("int too big")), RowsRefused)


def test_a_refused_message_is_dead_lettered_in_a_few_commits_and_the_rest_stored(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with Session(engine) as session:  # only enrolled devices' messages are stored
        record_enrollment(session, ["pump-1"], broker_credential=False, device_rows=False)
    calls: list[int] = []
    outages = [2]  # the database is down for the first two attempts

    def store(session: Session, batch: IngestBatch) -> StoreResult:
        calls.append(len(batch))
        if outages[0] > 0:
            outages[0] -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        if any(t.seq == POISON for t in batch.telemetry):
            raise IntegrityError("INSERT", {}, Exception("the stand-in refuses seq 13"))
        return store_batch(session, batch)

    connection = _Connection()
    for m in _messages(64):
        connection.inbound.put(m)
    ingest = MqttIngest(engine, connection, store=store)  # type: ignore[arg-type]
    ingest.start()
    try:
        wait_for(lambda: connection.acked_count() == 64, 30, "every message acknowledged")
    finally:
        ingest.stop()

    assert sorted(connection.acked) == list(range(1, 65)), "every message acknowledged"
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(TelemetryBatchRow)).one() == 63
        [letter] = session.exec(select(DeadLetter)).all()
    assert "store failed" in letter.reason and "seq 13" in letter.reason
    stats = ingest.snapshot_stats()
    assert stats.commit_errors == 2 + 7, "two outages, then one refusal per halving"
    assert stats.commits <= 8, f"{stats.commits} commits for 64 messages: not one per message"
    assert calls[:2] == [64, 64], "the batch was kept whole while the database was down"
