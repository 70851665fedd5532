"""Fenced leases: a job's tick that stalled past its lease while another hub process took the
job over and ran the same tick commits nothing and publishes nothing.

Each "hub" is what a hub process brings to the database: its own engine and lease holder. The
stalled tick waits on an Event at a chosen statement (an engine event of that hub only); the
test then ends its lease in the database (the ttl passing, without waiting for it), lets the
other hub take the job over and tick, and only then lets the stalled tick go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_hub.core.states import DeliveryStatus, RetrainState, RetrainTrigger, WebhookEvent
from cloud_hub.db.drift_tables import RetrainRun
from cloud_hub.db.enrollments import record_enrollment
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.ops_tables import Incident, JobLease, WebhookDelivery, WebhookRule
from cloud_hub.db.registry_tables import ModelRelease, ModelVersion, Rollout, TrainingJob
from cloud_hub.db.tables import Anomaly, Device
from cloud_hub.drift.loop import RetrainLoop, open_run
from cloud_hub.incidents.grouping import GroupingPolicy
from cloud_hub.incidents.job import IncidentTick
from cloud_hub.jobs.leased import LeasedWorker
from cloud_hub.jobs.request import TrainingRequest
from cloud_hub.jobs.training import JobRunner
from cloud_hub.keys.ring import HubKeys
from cloud_hub.mqtt.publisher import Publisher
from cloud_hub.notify.sender import DeliveryPolicy, WebhookSender
from cloud_hub.registry.records import register_artifact
from cloud_hub.registry.releases import Releases
from cloud_hub.rollouts.actions import create_rollout
from cloud_hub.rollouts.controller import RolloutController
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget
from shared.manifest import Manifest
from shared.messages import AnomalyEvent, Desired, ModelRef, TelemetryBatch
from tests.cloud_hub.helpers import tiny_artifact, wait_for
from tests.pg import hub_engines

pytestmark = pytest.mark.hub
KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
LONG_TTL_S = 60.0  # never expires on its own during a test: the test ends it
EPOCH = "0123456789abcdef"


class _Stall:
    """Stalls the first statement of one engine that starts with ``sql`` (after it ran, with
    ``after``), until :meth:`go`; ``reached`` says it is stalled there."""

    def __init__(self, engine: Engine, sql: str, *, after: bool = False) -> None:
        self.reached, self._go, self._armed = threading.Event(), threading.Event(), True
        self._sql = sql
        event.listen(engine, "after_cursor_execute" if after else "before_cursor_execute",
                     self._hook)

    def _hook(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self._armed and statement.lstrip().upper().startswith(self._sql):
            self._armed = False
            self.reached.set()
            assert self._go.wait(60), "the test never let the stalled tick go on"

    def go(self) -> None:
        self._go.set()


def _two_workers(name: str, engines: tuple[Engine, Engine], ticks: tuple[Any, Any]
                 ) -> tuple[LeasedWorker, LeasedWorker]:
    """The job ``name`` as two hub processes run it: hub-a's and hub-b's workers."""
    a, b = (LeasedWorker(e, name=name, tick=t, interval_s=0.05, lease_ttl_s=LONG_TTL_S,
                         holder=h) for e, t, h in zip(engines, ticks, ("hub-a", "hub-b"),
                                                      strict=True))
    return a, b


def _end_lease(engine: Engine, name: str) -> None:
    """What the ttl passing does to the stalled holder's lease."""
    with Session(engine) as session:
        session.exec(update(JobLease).where(JobLease.name == name)  # type: ignore[arg-type]
                     .values(expires_at=0.0))
        session.commit()


def _holder(engine: Engine, name: str) -> str | None:
    with Session(engine) as session:
        lease = session.get(JobLease, name)
        return lease.holder if lease is not None else None


@pytest.fixture(params=KINDS)
def two_hubs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Engine]]:
    with hub_engines(request.param, tmp_path, 2) as engines:
        yield engines


def _anomalies(engine: Engine, device: str, count: int) -> None:
    events = [AnomalyEvent(device_id=device, epoch=EPOCH, seq=i, ts=(i * 10.0, i * 10.0 + 1),
                           score=3.0, threshold=1.0, channels=["a"], detected_at=i * 10.0 + 1,
                           model=ModelRef(name="m", version=1)) for i in range(count)]
    with Session(engine) as session:
        store_batch(session, IngestBatch(anomalies=events))


def test_a_stalled_incident_tick_opens_nothing_once_another_hub_took_its_lease_over(
    two_hubs: list[Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    """Both ticks see the same ungrouped events; only the one holding the lease at its commit
    opens an incident for them (before the fence, the stalled one opened a second)."""
    a_engine, b_engine = two_hubs
    _anomalies(a_engine, "pump-1", 3)
    stall = _Stall(a_engine, "INSERT INTO INCIDENTS")  # after reading the events, before writing
    policy = GroupingPolicy(gap_s=3600.0, quiet_s=3600.0)
    b_tick = IncidentTick(b_engine, policy)
    a, b = _two_workers("incidents", (a_engine, b_engine),
                        (IncidentTick(a_engine, policy), b_tick))
    a.start()
    try:
        assert stall.reached.wait(30), "hub-a's tick reached its first write"
        b.start()
        _end_lease(b_engine, "incidents")
        wait_for(lambda: b_tick.incidents_opened == 1, timeout=30,
                 what="hub-b taking the lease over and opening the incident")
        with caplog.at_level(logging.WARNING, logger="cloud_hub.jobs.leased"):
            stall.go()
            wait_for(lambda: not a.holding, timeout=30, what="hub-a's tick over")
            with Session(b_engine) as session:
                incidents = session.exec(select(Incident)).all()
                assert len(incidents) == 1, "the stalled tick opened a second incident"
                grouped = set(session.exec(select(Anomaly.incident_id)).all())
                assert grouped == {incidents[0].id}, "every event in hub-b's incident"
            wait_for(lambda: a.lost == 1, timeout=30, what="hub-a's commit refused")
        assert any("no longer held by hub-a" in r.getMessage() for r in caplog.records)
        assert a.errors == 0, "a lost lease is a warning, not a failed tick"
    finally:
        stall.go()
        a.stop()
        b.stop()


def test_a_tick_that_outlived_its_lease_commits_when_no_other_hub_took_it_over(
    two_hubs: list[Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    """One hub, its tick slower than the lease (the bench's overload on PostgreSQL): the lease
    expired with nobody taking it over, so the tick's writes commit and the lease is renewed;
    with the fence that also required an unexpired lease, they were rolled back and done again."""
    engine = two_hubs[0]
    _anomalies(engine, "pump-1", 3)
    stall = _Stall(engine, "INSERT INTO INCIDENTS")
    tick = IncidentTick(engine, GroupingPolicy(gap_s=3600.0, quiet_s=3600.0))
    worker = LeasedWorker(engine, name="incidents", tick=tick, interval_s=0.05,
                          lease_ttl_s=1.0, holder="hub-a")
    worker.start()
    try:
        assert stall.reached.wait(30), "the tick reached its first write"
        with Session(engine) as session:
            lease = session.get(JobLease, "incidents")
            assert lease is not None and lease.holder == "hub-a"
            expired_at = lease.expires_at
        # Past the lease's expiry by the wall clock, which is what the fence compares with
        wait_for(lambda: time.time() > expired_at + 0.5, timeout=30,
                 what="the stalled tick outliving its lease")
        with caplog.at_level(logging.WARNING, logger="cloud_hub.db.leases"):
            stall.go()
            wait_for(lambda: tick.incidents_opened == 1, timeout=30, what="the incident opened")
            # not silent: the late renewal is named, though nothing was lost
            wait_for(lambda: any("incidents: renewed its lease" in r.getMessage()
                                 and "after it had expired (a 1-s lease)" in r.getMessage()
                                 for r in caplog.records), timeout=30, what="the warning")
        assert worker.lease.late_renewals == 1
        assert worker.lost == 0, "the tick's commit was refused: nobody else held the lease"
        assert worker.errors == 0
        with Session(engine) as session:
            assert len(session.exec(select(Incident)).all()) == 1
            lease = session.get(JobLease, "incidents")
            assert lease is not None and lease.holder == "hub-a"
            assert lease.expires_at > expired_at, "the fence renewed the lease"
    finally:
        stall.go()
        worker.stop()


class _Recording(Publisher):
    """A hub's publisher that records what it would send (no broker: what is counted is who
    published what)."""

    def __init__(self) -> None:  # no connection
        self.desired: list[Desired] = []
        self.models: list[int] = []

    def publish_model(self, manifest: Manifest, tflite: bytes, *,
                      as_variant: bool = False) -> None:
        self.models.append(manifest.release)

    def publish_desired_many(self, desired: list[Desired]) -> None:
        self.desired.extend(desired)


def _rollout_ready(engine: Engine, keys: HubKeys, devices: list[str]) -> int:
    """A published model and a running rollout of it to ``devices`` (one stage)."""
    with Session(engine) as session:
        record_enrollment(session, devices, broker_credential=False)
    with Session(engine) as session:
        record = register_artifact(session, tiny_artifact(), name="pump-ae", chunk_size=4096)
        Releases(keys, _Recording()).release(session, record, reason="publish")
        rollout = create_rollout(session, name="pump-ae", version=record.version,
                                 target=RolloutTarget(devices=devices),
                                 policy=RolloutPolicy(canary_size=len(devices)))
        assert rollout.id is not None
        return rollout.id


def test_a_stalled_rollout_tick_publishes_nothing_and_the_stage_starts_once(
    two_hubs: list[Engine], tmp_path: Path,
) -> None:
    """hub-a's tick reads the rollout and stalls before starting its stage; hub-b takes the
    lease over and starts it. hub-a then publishes no ``desired`` and commits nothing: each
    device is sent its desired version once, by hub-b (before the fence, on SQLite both hubs
    started the stage and sent it twice; on PostgreSQL hub-b waited on the rollout's row and
    hub-a, no longer the holder, sent and recorded it)."""
    a_engine, b_engine = two_hubs
    devices = ["pump-1", "pump-2"]
    keys = HubKeys(a_engine, keys_dir=tmp_path / "keys", first_key_path=tmp_path / "hub.key")
    rollout_id = _rollout_ready(a_engine, keys, devices)
    # hub-a stalls at its first write of the stage start (the rollout's stage_started_at), having
    # read the rollout as not started.
    stall = _Stall(a_engine, "UPDATE ROLLOUTS ")
    published = {"hub-a": _Recording(), "hub-b": _Recording()}
    a = RolloutController(a_engine, Releases(keys, published["hub-a"]), tick_s=0.05,
                          holder="hub-a", lease_ttl_s=LONG_TTL_S)
    b = RolloutController(b_engine, Releases(keys, published["hub-b"]), tick_s=0.05,
                          holder="hub-b", lease_ttl_s=LONG_TTL_S)
    a.start()
    try:
        assert stall.reached.wait(30), "hub-a's tick reached the stage's start"
        b.start()
        _end_lease(b_engine, "rollouts")
        wait_for(lambda: _holder(b_engine, "rollouts") == "hub-b", timeout=30,
                 what="hub-b taking the rollouts lease over")
        if b_engine.dialect.name == "sqlite":  # (on PostgreSQL it waits on hub-a's row lock)
            wait_for(lambda: published["hub-b"].desired, timeout=30,
                     what="hub-b starting the stage while hub-a is stalled")
        stall.go()
        wait_for(lambda: not a.holding, timeout=30, what="hub-a's tick over")
        assert published["hub-a"].desired == [], "the hub that lost the lease sent desired"
        wait_for(lambda: published["hub-b"].desired, timeout=30,
                 what="hub-b starting the stage")
        b.wake()
        wait_for(lambda: b.ticks >= 3, timeout=30, what="more ticks of hub-b")
    finally:
        stall.go()
        a.stop()
        b.stop()
    assert published["hub-a"].desired == [], "the hub that lost the lease sent desired"
    assert sorted(d.device_id for d in published["hub-b"].desired) == devices, \
        "each device was sent its desired version once"
    with Session(b_engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None and rollout.stage_started_at is not None
        assert session.exec(select(func.count()).select_from(ModelRelease)).one() == 1
        version = session.exec(select(ModelVersion.version)).one()
        for device in session.exec(select(Device)):
            assert (device.desired_name, device.desired_version) == ("pump-ae", version)


def test_a_stalled_notifier_sends_nothing_once_another_hub_took_its_lease_over(
    two_hubs: list[Engine],
) -> None:
    """hub-a reads a due delivery and stalls before sending it; hub-b takes over, sends it and
    records it. hub-a then sends nothing (before the fence, the receiver got it twice)."""
    a_engine, b_engine = two_hubs
    received: list[str] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request.headers["X-Edgeloop-Delivery"])
        return httpx.Response(204)

    with Session(a_engine) as session:
        rule = WebhookRule(name="ops", url="http://receiver.test/hook", secret="s" * 32,
                           created_at=1.0)
        session.add(rule)
        session.flush()
        incident = Incident(device_id="pump-1", started_at=1.0, ended_at=2.0, opened_at=1.0,
                            last_event_at=1.0, updated_at=1.0, peak_score=3.0,
                            peak_threshold=1.0, model_name="m", model_version=1)
        session.add(incident)
        session.flush()
        assert rule.id is not None and incident.id is not None
        session.add(WebhookDelivery(rule_id=rule.id, incident_id=incident.id,
                                    event=WebhookEvent.INCIDENT_OPENED, body="{}",
                                    created_at=1.0, next_attempt_at=1.0))
        session.commit()
    stall = _Stall(a_engine, "SELECT WEBHOOK_DELIVERIES", after=True)
    senders = [WebhookSender(e, DeliveryPolicy(), transport=httpx.MockTransport(receiver))
               for e in two_hubs]
    a, b = _two_workers("notifier", (a_engine, b_engine), (senders[0].tick, senders[1].tick))
    a.start()
    try:
        assert stall.reached.wait(30), "hub-a read the due delivery"
        b.start()
        _end_lease(b_engine, "notifier")

        def delivered() -> bool:
            with Session(b_engine) as session:
                return session.exec(select(WebhookDelivery.status)).one() \
                    == DeliveryStatus.DELIVERED

        wait_for(delivered, timeout=30, what="hub-b delivering it")
        stall.go()
        wait_for(lambda: not a.holding, timeout=30, what="hub-a's tick over")
        assert received == ["1"], "the delivery was sent once"
        wait_for(lambda: a.lost == 1, timeout=30, what="hub-a finding its lease lost")
    finally:
        stall.go()
        a.stop()
        b.stop()
        for s in senders:
            s.close()


def test_a_training_job_whose_lease_was_taken_over_keeps_the_end_its_new_holder_gave_it(
    two_hubs: list[Engine], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """hub-a's job stalls past its lease; hub-b takes the queue over and fails the job as left
    by a stopped process. hub-a's own end of the job is then refused (before the fence, it
    wrote its end over hub-b's)."""
    a_engine, b_engine = two_hubs
    with Session(a_engine) as session:
        store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
            device_id="pump-1", epoch=EPOCH, seq=s, channels=["a"],
            ts=[s * 100.0 + i for i in range(50)], values=[[1.0]] * 50) for s in range(2)]))
    with Session(a_engine) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False)
    started, go = threading.Event(), threading.Event()

    def stalled_training(*_args: Any, **_kwargs: Any) -> Any:
        started.set()
        assert go.wait(60), "the test never let the job go on"
        raise RuntimeError("hub-a's stand-in ends the job")

    runners = [JobRunner(e, register=lambda *a: ("m", 1), uploads_dir=tmp_path, holder=h,
                         lease_ttl_s=LONG_TTL_S, poll_s=0.1,
                         run_training=stalled_training if h == "hub-a" else None)
               for e, h in zip(two_hubs, ("hub-a", "hub-b"), strict=True)]
    runners[0].start()
    try:
        with Session(a_engine) as session:
            job_id = runners[0].submit(session, name="m", request=TrainingRequest(
                devices=["pump-1"], spec={"window": 8, "epochs": 1})).id
        assert started.wait(30), "hub-a started the job"
        _end_lease(b_engine, "training")
        runners[1].start()

        def error() -> str | None:
            with Session(b_engine) as session:
                job = session.get(TrainingJob, job_id)
                return job.error if job is not None else None

        wait_for(lambda: error() == "the hub process running this job stopped", timeout=30,
                 what="hub-b failing the job it took over")
        with caplog.at_level(logging.WARNING, logger="cloud_hub.jobs.training"):
            go.set()
            wait_for(lambda: error() != "the hub process running this job stopped" or any(
                "no longer held by hub-a" in r.getMessage() for r in caplog.records),
                timeout=30, what="hub-a ending its job")
        assert error() == "the hub process running this job stopped", \
            "the process that lost the lease wrote its end of the job"
    finally:
        go.set()
        for r in runners:
            r.stop()


def test_a_stalled_retrain_tick_leaves_no_second_training_job(two_hubs: list[Engine],
                                                               tmp_path: Path) -> None:
    """hub-a's retrain tick queues a triggered run's training job and stalls before recording
    the run's move to training; hub-b takes the lease over and starts the run's training. One
    training job is queued, the run's (before, hub-a's job had committed on its own and stayed
    queued beside hub-b's). On SQLite hub-a stalls at the job's insert instead: past it, it
    would hold the database's write lock."""
    a_engine, b_engine = two_hubs
    with Session(a_engine) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False)
        session.exec(update(Device).values(active_name="pump-ae", active_version=1))
        session.commit()
        run_id = open_run(session, devices=["pump-1"], trigger=RetrainTrigger.OPERATOR,
                          reason="test", now=1000.0, policy=None).id
    first_write = ("INSERT INTO TRAINING_JOBS" if a_engine.dialect.name == "sqlite"
                   else "UPDATE RETRAIN_RUNS")
    stall = _Stall(a_engine, first_write)
    keys = HubKeys(a_engine, keys_dir=tmp_path / "keys", first_key_path=tmp_path / "hub.key")
    loops = [RetrainLoop(e, jobs=JobRunner(e, register=lambda *a: ("m", 1),
                                           uploads_dir=tmp_path, holder=h),
                         releases=Releases(keys, _Recording()), wake_rollouts=lambda: None)
             for e, h in zip(two_hubs, ("hub-a", "hub-b"), strict=True)]
    a, b = _two_workers("retrain", (a_engine, b_engine), (loops[0], loops[1]))

    def jobs() -> list[int | None]:
        with Session(b_engine) as session:
            return list(session.exec(select(TrainingJob.id)))

    def state() -> str | None:
        with Session(b_engine) as session:
            run = session.get(RetrainRun, run_id)
            return run.state if run is not None else None

    a.start()
    try:
        assert stall.reached.wait(30), "hub-a's tick reached the run's training"
        b.start()
        _end_lease(b_engine, "retrain")
        wait_for(lambda: state() == RetrainState.TRAINING, timeout=30,
                 what="hub-b starting the run's training")
        stall.go()
        wait_for(lambda: a.lost == 1, timeout=30, what="hub-a's commit refused")
    finally:
        stall.go()
        a.stop()
        b.stop()
    with Session(b_engine) as session:
        run = session.get(RetrainRun, run_id)
        assert run is not None and run.state == RetrainState.TRAINING
        assert jobs() == [run.training_job_id], "one training job, the one the run follows"
