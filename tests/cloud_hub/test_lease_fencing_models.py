"""Fenced leases of the jobs that make and ship models: a rollout's, the training queue's and
the retrain loop's tick that stalled past its lease while another hub process took the job over
publishes nothing and leaves one job and one end of it.

The method is test_lease_fencing.py's: each "hub" brings its own engine and lease holder, the
stalled tick waits at a chosen statement, the test ends its lease in the database, lets the
other hub take the job over, and only then lets the stalled tick go on.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_hub.core.states import RetrainState, RetrainTrigger
from cloud_hub.db.drift_tables import RetrainRun
from cloud_hub.db.enrollments import record_enrollment
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.ops_tables import JobLease
from cloud_hub.db.registry_tables import ModelRelease, ModelVersion, Rollout, TrainingJob
from cloud_hub.db.tables import Device
from cloud_hub.drift.loop import RetrainLoop, open_run
from cloud_hub.jobs.request import TrainingRequest
from cloud_hub.jobs.training import JobRunner
from cloud_hub.keys.ring import HubKeys
from cloud_hub.mqtt.publisher import Publisher
from cloud_hub.registry.records import register_artifact
from cloud_hub.registry.releases import Releases
from cloud_hub.rollouts.actions import create_rollout
from cloud_hub.rollouts.controller import RolloutController
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget
from shared.manifest import Manifest
from shared.messages import Desired, TelemetryBatch
from tests.cloud_hub.helpers import (
    LONG_TTL_S,
    _end_lease,
    _Stall,
    _two_workers,
    tiny_artifact,
    wait_for,
)

pytestmark = pytest.mark.hub
EPOCH = "0123456789abcdef"


def _holder(engine: Engine, name: str) -> str | None:
    with Session(engine) as session:
        lease = session.get(JobLease, name)
        return lease.holder if lease is not None else None


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
