"""Ingest's own connection and what runs beside it: a revocation applies to the next batch
although ingest remembers enrolled devices, and the maintenance job waits while ingest has a
backlog, then catches up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from cloud_hub.db.engine import make_engine
from cloud_hub.db.enrollments import record_enrollment, record_revocation
from cloud_hub.db.ingest_store import IngestBatch, StoreResult, store_batch
from cloud_hub.db.tables import DeadLetter, TelemetryBatchRow
from cloud_hub.jobs.leased import LeasedWorker
from cloud_hub.maintenance.job import MaintenanceTick
from cloud_hub.maintenance.retention import RetentionPolicy
from cloud_hub.maintenance.rollup_reads import read_rollups
from cloud_hub.mqtt.ingest import MqttIngest
from shared.topics import Topics
from tests.cloud_hub.helpers import wait_for
from tests.cloud_hub.ingest_fakes import FakeConnection, telemetry_message

pytestmark = pytest.mark.hub
TOPICS = Topics()
EPOCH = "0123456789abcdef"
NOW = time.time() // 60 * 60  # readings of this hour: no retention removes them


class _Connection(FakeConnection):
    def send(self, device_id: str, seqs: range) -> None:
        for seq in seqs:
            self.inbound.put(telemetry_message(device_id, seq, ts=NOW + seq, epoch=EPOCH))


def _stored_seqs(engine: object, device_id: str) -> list[int]:
    with Session(engine) as session:  # type: ignore[call-overload]
        return sorted(session.exec(select(TelemetryBatchRow.seq).where(
            TelemetryBatchRow.device_id == device_id)).all())


def test_a_revocation_by_another_process_applies_to_the_next_batch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    with Session(engine) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False, device_rows=False)
    connection = _Connection()
    ingest = MqttIngest(engine, connection, batch_max=4, batch_wait_s=0.01)  # type: ignore[arg-type]
    other_process = make_engine(url, create=False)  # the admin's request, served elsewhere
    ingest.start()
    try:
        connection.send("pump-1", range(0, 6))
        wait_for(lambda: connection.acked_count() == 6, 20, "the enrolled device's batches")
        with Session(other_process) as session:
            record_revocation(session, "pump-1")
        connection.send("pump-1", range(6, 9))
        wait_for(lambda: connection.acked_count() == 9, 20, "the later batches taken in")
        with Session(other_process) as session:  # enrolled again: its batches are stored
            record_enrollment(session, ["pump-1"], broker_credential=False, device_rows=False)
        connection.send("pump-1", range(9, 11))
        wait_for(lambda: connection.acked_count() == 11, 20, "the batches after re-enrolling")
    finally:
        ingest.stop()
        other_process.dispose()

    assert _stored_seqs(engine, "pump-1") == [0, 1, 2, 3, 4, 5, 9, 10], \
        "nothing sent while revoked is stored, although the device was remembered enrolled"
    with Session(engine) as session:
        reasons = session.exec(select(DeadLetter.reason)).all()
    assert reasons == ["device 'pump-1' is not enrolled"] * 3
    assert ingest.snapshot_stats().unenrolled_refused == 3


def test_maintenance_waits_while_ingest_is_behind_then_catches_up(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with Session(engine) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False, device_rows=False)
    release = threading.Event()

    def store(session: Session, batch: IngestBatch) -> StoreResult:
        assert release.wait(30), "the test never released the store"
        return store_batch(session, batch)

    batch_max, total = 8, 100
    connection = _Connection()
    connection.send("pump-1", range(total))
    ingest = MqttIngest(engine, connection, batch_max=batch_max, batch_wait_s=0.01,  # type: ignore[arg-type]
                        store=store)
    asked = [0]

    def behind() -> bool:
        asked[0] += 1
        return ingest.behind()

    fold = MaintenanceTick(engine, RetentionPolicy(), fold_limit=16, settle_s=0.0)
    maintenance = LeasedWorker(engine, name="maintenance", tick=fold, interval_s=0.05,
                               busy_share=0.5, defer_while=behind)
    ingest.start()
    try:
        # The first full batch is held in its commit: ingest is behind, with 92 waiting.
        wait_for(lambda: connection.inbound.qsize() == total - batch_max, 20, "a batch taken")
        assert ingest.behind()
        maintenance.start()
        wait_for(lambda: asked[0] >= 4, 20, "the job asking, round after round, to go on")
        assert maintenance.ticks == 0 and fold.folded == 0, "it ticked while ingest was behind"
        release.set()
        wait_for(lambda: connection.acked_count() == total, 30, "the backlog stored")
        wait_for(lambda: fold.folded == total, 30, "every stored row folded after the backlog")
    finally:
        release.set()
        maintenance.stop()
        ingest.stop()

    wait_for(lambda: not ingest.behind(), 10, "ingest no longer behind once the backlog is gone")
    assert maintenance.deferred_s > 0
    with Session(engine) as session:
        stored = session.exec(select(func.count()).select_from(TelemetryBatchRow)).one()
    with engine.connect() as conn:
        minutes = read_rollups(conn, device_ids=["pump-1"], resolution="1m", since=None,
                               until=None)["pump-1"]
    assert stored == total
    assert int(minutes["count"].sum()) == total, "every reading in the 1-minute rollups"


def test_ingest_stays_behind_for_a_moment_after_a_full_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short take right after a full one (the broker refilling the hub's window) does not
    end the backlog: background jobs would run in the middle of an overload."""
    import cloud_hub.mqtt.ingest as ingest_module

    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with Session(engine) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False, device_rows=False)
    connection = _Connection()
    ingest = MqttIngest(engine, connection, batch_max=8, batch_wait_s=0.01)  # type: ignore[arg-type]
    monkeypatch.setattr(ingest_module, "BEHIND_HOLD_S", 3600.0)
    assert not ingest.behind(), "behind before anything was taken"
    connection.send("pump-1", range(8))  # one full batch, then nothing
    ingest.start()
    try:
        wait_for(lambda: connection.acked_count() == 8, 20, "the full batch stored")
        time.sleep(0.1)  # takes since then came back empty
        assert ingest.behind(), "a full batch was taken within the hold"
        monkeypatch.setattr(ingest_module, "BEHIND_HOLD_S", 0.0)
        assert not ingest.behind(), "the hold is over and nothing waits"
    finally:
        ingest.stop()
