"""Ingest's writers: with several, batches commit in parallel, each is acknowledged only after
its own commit and in the order received, and only a bounded number of batches wait for a
writer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, func, select

from cloud_hub.db.engine import make_engine
from cloud_hub.db.enrollments import record_enrollment
from cloud_hub.db.ingest_store import IngestBatch, StoreResult, store_batch
from cloud_hub.db.tables import TelemetryBatchRow
from cloud_hub.mqtt.inbox import Inbox
from cloud_hub.mqtt.ingest import MqttIngest
from shared.topics import Topics
from tests.cloud_hub.helpers import wait_for
from tests.cloud_hub.ingest_fakes import FakeConnection as _Connection
from tests.cloud_hub.ingest_fakes import new_inbox, telemetry_message

pytestmark = pytest.mark.hub
TOPICS = Topics()
BATCH = 8


def _inbox_with(n: int) -> Inbox:
    inbox = new_inbox()
    for i in range(n):
        inbox.put(telemetry_message("pump-1", i))
    return inbox


def _enrolled_engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with Session(engine) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False, device_rows=False)
    return engine


def _two_writers_started(engine: Engine, total: int,
                         store: Callable[[Session, IngestBatch], StoreResult]
                         ) -> tuple[_Connection, MqttIngest]:
    """Ingest with two writers, started on an inbox of ``total`` messages."""
    connection = _Connection(_inbox_with(total))
    ingest = MqttIngest(engine, connection, batch_max=BATCH, batch_wait_s=0.01,  # type: ignore[arg-type]
                        store=store, writers=2)
    ingest.start()
    return connection, ingest


def _stored(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(TelemetryBatchRow)).one()


def test_batches_commit_past_a_slow_one_but_are_acknowledged_in_order(tmp_path: Path) -> None:
    """Two writers: while batch 1 is held in its commit the other writer stores every later
    batch (one of them after a failed commit), yet nothing is acknowledged before batch 1,
    and then all of it is, in the order received."""
    engine = _enrolled_engine(tmp_path)
    first_commit_may_finish = threading.Event()
    attempts: list[int] = []  # first seq of each batch, per attempt

    def store(session: Session, batch: IngestBatch) -> StoreResult:
        first = min(t.seq for t in batch.telemetry)
        attempts.append(first)
        if first == 0:
            assert first_commit_may_finish.wait(30), "the test never released the commit"
        if first == BATCH and attempts.count(BATCH) == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return store_batch(session, batch)

    total = 10 * BATCH
    connection, ingest = _two_writers_started(engine, total, store)
    try:
        wait_for(lambda: _stored(engine) == total - BATCH, 30,
                 "every batch but the held one committed")
        assert connection.acked_now() == [], "nothing acknowledged before the first batch"
        first_commit_may_finish.set()
        wait_for(lambda: len(connection.acked_now()) == total, 30, "every message acknowledged")
    finally:
        first_commit_may_finish.set()
        ingest.stop()

    assert connection.acked_now() == list(range(1, total + 1)), "acknowledged in order"
    assert attempts.count(BATCH) == 2, "the failed batch was committed again"
    assert _stored(engine) == total, "every message stored once"
    assert ingest.snapshot_stats().commit_errors == 1


def test_at_most_one_batch_waits_beyond_those_in_flight(tmp_path: Path) -> None:
    """With two writers both held in their commits, the worker takes one batch for the queue
    and one it holds until there is room: no more leaves the inbox."""
    engine = _enrolled_engine(tmp_path)
    may_commit = threading.Event()
    holding = threading.Semaphore(0)

    def store(session: Session, batch: IngestBatch) -> StoreResult:
        holding.release()
        assert may_commit.wait(30), "the test never released the commits"
        return store_batch(session, batch)

    total = 10 * BATCH
    connection, ingest = _two_writers_started(engine, total, store)
    try:
        for _ in range(2):
            assert holding.acquire(timeout=30), "both writers in a commit"
        wait_for(lambda: connection.inbound.qsize() == total - 4 * BATCH, 30,
                 "two batches in flight, one queued, one held by the worker")
        assert connection.inbound.qsize() == total - 4 * BATCH
        assert connection.acked_now() == []
        may_commit.set()
        wait_for(lambda: len(connection.acked_now()) == total, 30, "every message acknowledged")
    finally:
        may_commit.set()
        ingest.stop()
    assert connection.acked_now() == list(range(1, total + 1))
    assert _stored(engine) == total


def test_no_writers_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one writer"):
        MqttIngest(None, _Connection(), writers=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("writers", [1, 2])
def test_stop_stores_and_acknowledges_what_was_already_taken(tmp_path: Path,
                                                             writers: int) -> None:
    engine = _enrolled_engine(tmp_path)
    total = 5 * BATCH
    connection = _Connection(_inbox_with(total))
    ingest = MqttIngest(engine, connection, batch_max=BATCH, batch_wait_s=0.01,  # type: ignore[arg-type]
                        writers=writers)
    ingest.start()
    ingest.stop()
    assert connection.inbound.qsize() == 0
    assert connection.acked_now() == list(range(1, total + 1))
    assert _stored(engine) == total
