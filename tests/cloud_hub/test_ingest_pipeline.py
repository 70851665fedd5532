"""Ingest's pipeline: the worker decodes the next batch while the writer commits one; a batch is
acknowledged only after its own commit, in the order received, and only a bounded number of
decoded batches wait for the writer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
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


def test_a_failed_commit_is_not_acknowledged_nor_lost_and_acks_keep_their_order(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with Session(engine) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False, device_rows=False)
    first_commit_may_finish = threading.Event()
    acked_when_second_failed: list[list[int]] = []
    attempts: list[int] = []  # first seq of each batch, per attempt

    def store(session: Session, batch: IngestBatch) -> StoreResult:
        first = min(t.seq for t in batch.telemetry)
        attempts.append(first)
        if first == 0:
            assert first_commit_may_finish.wait(20), "the test never released the commit"
        if first == BATCH and attempts.count(BATCH) == 1:
            acked_when_second_failed.append(connection.acked_now())
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return store_batch(session, batch)

    total = 10 * BATCH
    connection = _Connection(_inbox_with(total))
    ingest = MqttIngest(engine, connection, batch_max=BATCH, batch_wait_s=0.01,  # type: ignore[arg-type]
                        store=store, in_flight=1)
    ingest.start()
    try:
        # The writer holds batch 1 in its commit: batch 2 waits decoded, batch 3 is decoded
        # and waits for room; no more than that is taken from the inbox.
        wait_for(lambda: connection.inbound.qsize() == total - 3 * BATCH, 20,
                 "three batches taken while the first commits")
        assert connection.inbound.qsize() == total - 3 * BATCH
        assert connection.acked_now() == [], "nothing acknowledged before its commit"
        first_commit_may_finish.set()
        wait_for(lambda: len(connection.acked_now()) == total, 20, "every message acknowledged")
    finally:
        first_commit_may_finish.set()
        ingest.stop()

    assert acked_when_second_failed == [list(range(1, BATCH + 1))], \
        "batch 2 was not acknowledged when its commit failed; batch 1 was"
    assert connection.acked_now() == list(range(1, total + 1)), "acknowledged in order"
    assert attempts.count(BATCH) == 2, "the failed batch was committed again"
    with Session(engine) as session:
        stored = session.exec(select(func.count()).select_from(TelemetryBatchRow)).one()
    assert stored == total, "every message stored once"
    assert ingest.snapshot_stats().commit_errors == 1


@pytest.mark.parametrize("in_flight", [0, 2])
def test_stop_stores_and_acknowledges_what_was_already_taken(tmp_path: Path,
                                                             in_flight: int) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with Session(engine) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False, device_rows=False)
    total = 5 * BATCH
    connection = _Connection(_inbox_with(total))
    ingest = MqttIngest(engine, connection, batch_max=BATCH, batch_wait_s=0.01,  # type: ignore[arg-type]
                        in_flight=in_flight)
    ingest.start()
    ingest.stop()
    assert connection.inbound.qsize() == 0
    assert connection.acked_now() == list(range(1, total + 1))
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(TelemetryBatchRow)).one() == total
