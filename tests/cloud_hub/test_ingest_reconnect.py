"""Ingest on PostgreSQL keeps one connection and never pings it: when the server terminates it
(pg_terminate_backend, as a restart or an idle timeout would), the batch fails typed, ingest
opens a new connection and stores the batch again: every message stored once, acknowledged
only after its commit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from cloud_hub.db.engine import make_engine
from cloud_hub.db.enrollments import record_enrollment
from cloud_hub.db.ingest_store import IngestBatch, StoreResult, store_batch
from cloud_hub.db.tables import Device, StreamMark, TelemetryBatchRow
from cloud_hub.mqtt.ingest import MqttIngest
from shared.messages import TelemetryBatch, encode
from shared.topics import Topics
from tests.cloud_hub.helpers import wait_for
from tests.cloud_hub.ingest_fakes import FakeConnection as _Connection
from tests.cloud_hub.ingest_fakes import FakeMessage as _Message
from tests.pg import pg_schema_engine

pytestmark = [pytest.mark.postgres, pytest.mark.hub]
SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOPICS = Topics()
DEVICES = ("pump-1", "pump-2")
PER_DEVICE = 60
BATCH = 8


@pytest.fixture
def app_name() -> str:
    return f"edgeloop-ingest-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pg_engine(app_name: str) -> Iterator[Engine]:
    """The hub's engine on a schema of its own; its connections carry ``app_name``, so the
    test terminates them and no other client's."""
    with pg_schema_engine(app_name) as engine:
        yield engine


def _terminate(app_name: str) -> int:
    """pg_terminate_backend every connection of the hub's engine; how many there were."""
    admin = make_engine(SERVER, create=False)
    try:
        with admin.connect() as conn:
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                {"name": app_name}).all())
    finally:
        admin.dispose()


def _connection_holding(messages: list[tuple[str, int]]) -> _Connection:
    """A connection whose inbox holds telemetry batch (device, seq) of each, mids from 1."""
    connection = _Connection()
    for mid, (device_id, seq) in enumerate(messages, start=1):
        connection.inbound.put(_Message(TOPICS.telemetry(device_id), encode(TelemetryBatch(
            device_id=device_id, epoch="0123456789abcdef", seq=seq, channels=["a"],
            ts=[float(seq)], values=[[1.0]])), mid=mid))
    return connection


def _until_all_acknowledged(ingest: MqttIngest, connection: _Connection, n: int) -> None:
    ingest.start()
    try:
        wait_for(lambda: len(connection.acked_now()) == n, 60,
                 "every message stored and acknowledged")
    finally:
        ingest.stop()


def test_ingest_reconnects_when_its_connection_is_terminated_and_stores_exactly_once(
    pg_engine: Engine, app_name: str,
) -> None:
    with Session(pg_engine) as session:
        record_enrollment(session, list(DEVICES), broker_credential=False)
    messages = [(d, s) for s in range(PER_DEVICE) for d in DEVICES]
    connection = _connection_holding(messages)
    calls = [0]
    terminated: list[str] = []  # where each termination happened
    acked_at_kill: list[int] = []

    def store(session: Session, batch: IngestBatch) -> StoreResult:
        calls[0] += 1
        if calls[0] in (2, 7):  # inside the batch's transaction, after its screen
            acked_at_kill.append(len(connection.acked_now()))
            terminated.append(f"in a transaction: {_terminate(app_name)}")
        result = store_batch(session, batch)
        if calls[0] in (4, 9):  # after the commit: the connection dies while idle
            terminated.append(f"idle: {_terminate(app_name)}")
        return result

    ingest = MqttIngest(pg_engine, connection, batch_max=BATCH, batch_wait_s=0.01,  # type: ignore[arg-type]
                        store=store)
    _until_all_acknowledged(ingest, connection, len(messages))

    assert len(terminated) == 4 and all(not t.endswith(": 0") for t in terminated), terminated
    # A batch whose connection died in its transaction was not acknowledged then.
    assert acked_at_kill == [BATCH, 5 * BATCH], acked_at_kill
    assert sorted(connection.acked_now()) == list(range(1, len(messages) + 1)), \
        "each message acknowledged once"
    stats = ingest.snapshot_stats()
    assert stats.commit_errors >= 4, "each termination failed one attempt, typed"
    with Session(pg_engine) as session:
        rows = session.exec(select(TelemetryBatchRow.device_id, TelemetryBatchRow.seq)).all()
        counted = session.exec(select(func.sum(Device.telemetry_batches))).one()
    assert sorted(rows) == sorted(messages), "every message stored exactly once"
    assert counted == len(messages), "the devices' counters count each once"


def test_two_writers_store_exactly_once_with_gapless_watermarks_and_ordered_acks(
    pg_engine: Engine, app_name: str,
) -> None:
    """Two transactions in flight on PostgreSQL, every batch touching every device, one
    connection terminated inside a transaction: each message is stored and counted once,
    every stream's watermark reaches its last seq (a batch committed before an earlier one
    leaves no gap behind), and the PUBACKs go out in the order received."""
    devices = [f"pump-{i}" for i in range(12)]
    per_device = 80
    with Session(pg_engine) as session:
        record_enrollment(session, devices, broker_credential=False)
    messages = [(d, s) for s in range(per_device) for d in devices]
    connection = _connection_holding(messages)
    calls = [0]
    terminated: list[int] = []

    def store(session: Session, batch: IngestBatch) -> StoreResult:
        calls[0] += 1
        if calls[0] == 5:
            terminated.append(_terminate(app_name))
        return store_batch(session, batch)

    ingest = MqttIngest(pg_engine, connection, batch_max=3 * len(devices), batch_wait_s=0.01,  # type: ignore[arg-type]
                        store=store, writers=2)
    _until_all_acknowledged(ingest, connection, len(messages))

    assert terminated and terminated[0] >= 1, terminated
    assert connection.acked_now() == list(range(1, len(messages) + 1)), \
        "each message acknowledged once, in the order received"
    assert ingest.snapshot_stats().commit_errors >= 1
    with Session(pg_engine) as session:
        rows = session.exec(select(TelemetryBatchRow.device_id, TelemetryBatchRow.seq)).all()
        counted = session.exec(select(Device.device_id, Device.telemetry_batches)).all()
        marks = session.exec(select(StreamMark.device_id, StreamMark.watermark)
                             .where(StreamMark.stream == "telemetry")).all()
    assert sorted(rows) == sorted(messages), "every message stored exactly once"
    assert sorted(counted) == [(d, per_device) for d in sorted(devices)]
    assert sorted(marks) == [(d, per_device - 1) for d in sorted(devices)], \
        "every watermark at its last seq"
