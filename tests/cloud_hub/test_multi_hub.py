"""Several hub processes on one PostgreSQL database: counters that never lose or double a
count, a rollout controller and a training queue that run in one process at a time.

Each "hub" here is what a hub process brings to the database (its own engine and connection
pool, its own lease holder id); tests/integration/test_multi_hub_processes.py runs real ones.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_hub.db.engine import make_engine
from cloud_hub.db.enrollments import record_enrollment
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.ops_tables import JobLease
from cloud_hub.db.registry_tables import TrainingJob
from cloud_hub.db.tables import Device, StreamMark, TelemetryBatchRow
from cloud_hub.jobs.request import TrainingRequest
from cloud_hub.jobs.training import JobRunner
from cloud_hub.mqtt.store_connection import DatabaseUnavailable, classify
from cloud_hub.rollouts.controller import RolloutController
from shared.messages import TelemetryBatch
from tests.cloud_hub.helpers import wait_for
from tests.pg import pg_database

pytestmark = [pytest.mark.hub, pytest.mark.postgres]
__all__ = ["pg_database"]
EPOCH = "0123456789abcdef"


def _batch(device: str, seq: int, rows: int) -> TelemetryBatch:
    return TelemetryBatch(device_id=device, epoch=EPOCH, seq=seq, channels=["a"],
                          ts=[seq * 100.0 + i for i in range(rows)],
                          values=[[float(seq)]] * rows)


def test_device_counters_are_exact_with_four_writers_storing_overlapping_copies(
    pg_database: str,
) -> None:
    """Four writers store the same devices' streams at once, each message by two of them
    (as $share and an agent's resend make happen): every count is exact."""
    make_engine(pg_database).dispose()  # the schema, once
    devices = [f"pump-{i}" for i in range(20)]
    messages = [_batch(d, seq, rows=1 + seq % 5) for d in devices for seq in range(60)]
    rng = random.Random(7)
    shares: list[list[TelemetryBatch]] = [[] for _ in range(4)]
    for m in messages:
        for w in rng.sample(range(4), 2):
            shares[w].append(m)
    errors: list[str] = []
    retries = [0]

    def writer(part: list[TelemetryBatch]) -> None:
        engine = make_engine(pg_database, create=False)
        try:
            rng_w = random.Random(len(part))
            rng_w.shuffle(part)
            for i in range(0, len(part), 40):
                batch = part[i:i + 40]
                while True:
                    try:
                        with Session(engine) as session:
                            store_batch(session, IngestBatch(telemetry=list(batch)))
                        break
                    except Exception as exc:  # what ingest's retry loop does
                        if not isinstance(classify(exc), DatabaseUnavailable):
                            errors.append(repr(exc))
                            return
                        retries[0] += 1
        finally:
            engine.dispose()

    threads = [threading.Thread(target=writer, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    engine = make_engine(pg_database, create=False)
    try:
        with Session(engine) as session:
            assert session.exec(select(func.count()).select_from(TelemetryBatchRow)).one() \
                == len(messages)
            for device in session.exec(select(Device)):
                mine = [m for m in messages if m.device_id == device.device_id]
                assert device.telemetry_batches == len(mine), device.device_id
                assert device.telemetry_readings == sum(m.readings for m in mine)
            for mark in session.exec(select(StreamMark)):
                assert (mark.watermark, mark.top) == (59, 59), mark
    finally:
        engine.dispose()


# Leases of the leader-election tests: long enough that no stall of a loaded machine lets
# another hub take one over from a live holder (which would be right for a lease, and make
# both hubs tick or train).
LEASE_TTL_S = 60.0


class _Recorder:
    """Wraps a controller's tick: who ticked when, and whether two ticks ever overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.ticks: list[str] = []
        self.overlaps: list[tuple[str, ...]] = []

    def wrap(self, name: str, controller: RolloutController) -> None:
        inner = controller.tick

        def tick(now: float | None = None) -> None:
            with self.lock:
                if self.running:
                    self.overlaps.append((name, *self.running))
                self.running.add(name)
                self.ticks.append(name)
            try:
                time.sleep(0.02)  # a tick that takes a little time
                inner(now)
            finally:
                with self.lock:
                    self.running.discard(name)

        controller.tick = tick  # type: ignore[method-assign]


def test_two_hubs_never_run_a_rollout_tick_at_the_same_time_and_one_takes_over(
    pg_database: str,
) -> None:
    make_engine(pg_database).dispose()
    recorder = _Recorder()
    controllers: dict[str, RolloutController] = {}
    engines = []
    # The lease's ttl is far longer than the test: a leader is never taken over for being
    # slow (a ttl of 1 s was: under load its thread went 1.1-1.9 s between two renewals, one
    # database round trip alone took 1.4 s, and the other hub took over while the leader
    # lived). Taking over does not wait for the ttl: a leader that stops gives its lease up.
    for name in ("hub-a", "hub-b"):
        engine = make_engine(pg_database, create=False)
        engines.append(engine)
        c = RolloutController(engine, releases=None,  # type: ignore[arg-type]
                              tick_s=0.05, holder=name, lease_ttl_s=LEASE_TTL_S)
        recorder.wrap(name, c)
        controllers[name] = c
    try:
        for c in controllers.values():
            c.start()
        wait_for(lambda: len(recorder.ticks) >= 20, what="twenty ticks")
        first = recorder.ticks[0]
        assert set(recorder.ticks) == {first}, "both hubs ticked while one held the lease"
        controllers[first].stop()  # the leader goes away: the other takes over
        other = "hub-b" if first == "hub-a" else "hub-a"
        wait_for(lambda: recorder.ticks.count(other) >= 10, timeout=30,
                 what=f"{other} taking over")
        assert not recorder.overlaps, recorder.overlaps
    finally:
        for c in controllers.values():
            c.stop()
        for e in engines:
            e.dispose()


def _pump_1_enrolled_with_readings(url: str) -> None:
    setup = make_engine(url)
    with Session(setup) as session:
        store_batch(session, IngestBatch(telemetry=[_batch("pump-1", s, 50) for s in range(4)]))
    with Session(setup) as session:
        record_enrollment(session, ["pump-1"], broker_credential=False)
    setup.dispose()


def _two_runners(url: str, uploads: Any, training: Callable[[str, Engine], Any], *,
                 ttl_s: float) -> tuple[list[JobRunner], list[Engine]]:
    """Training runners of two hub processes on one database (not started), each training
    with ``training(holder, its engine)``."""
    runners, engines = [], []
    for name in ("hub-a", "hub-b"):
        engine = make_engine(url, create=False)
        engines.append(engine)
        runners.append(JobRunner(engine, register=lambda *a: ("m", 1),
                                 run_training=training(name, engine), uploads_dir=uploads,
                                 holder=name, lease_ttl_s=ttl_s, poll_s=0.1))
    return runners, engines


def test_training_jobs_submitted_to_two_hubs_each_run_once_one_at_a_time(
    pg_database: str, tmp_path: Any,
) -> None:
    _pump_1_enrolled_with_readings(pg_database)
    running: list[int] = []
    overlaps: list[int] = []
    ran: list[str] = []
    lock = threading.Lock()

    def training(holder: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with lock:
                if running:
                    overlaps.append(len(running))
                running.append(1)
                ran.append(holder)
            try:
                time.sleep(0.2)
                raise RuntimeError("the stand-in stops here (the job ran)")
            finally:
                with lock:
                    running.pop()
        return run

    runners, engines = _two_runners(pg_database, tmp_path, lambda name, _: training(name),
                                    ttl_s=LEASE_TTL_S)
    try:
        for r in runners:
            r.start()
        ids = []
        for i in range(6):
            with Session(engines[i % 2]) as session:
                job = runners[i % 2].submit(session, name=f"m{i}", request=TrainingRequest(
                    devices=["pump-1"], spec={"window": 8, "epochs": 1}))
                ids.append(job.id)

        def finished() -> bool:
            with Session(engines[0]) as session:
                return all(session.get(TrainingJob, i).status in ("failed", "succeeded")
                           for i in ids)

        wait_for(finished, timeout=60, what="six jobs finished")
        assert len(ran) == 6, ran  # each job ran exactly once
        assert not overlaps, "two trainings ran at the same time"
    finally:
        for r in runners:
            r.stop()
        for e in engines:
            e.dispose()


def test_a_training_job_that_reports_no_progress_for_longer_than_the_lease_keeps_it(
    pg_database: str, tmp_path: Any,
) -> None:
    # A stage without progress reports (loading a large training set, converting and comparing
    # four quantization modes) may outlast the lease's ttl: the lease must still be renewed,
    # or another hub process takes it over, fails the running job and trains the next one
    # at the same time.
    _pump_1_enrolled_with_readings(pg_database)
    ttl_s = 5.0
    running: list[str] = []
    ran: list[str] = []
    overlaps: list[str] = []
    lock = threading.Lock()

    def training(holder: str, engine: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with lock:
                if running:
                    overlaps.append(holder)
                running.append(holder)
                ran.append(holder)
            try:
                with Session(engine) as session:
                    lease = session.get(JobLease, "training")
                    assert lease is not None
                    expires_at = lease.expires_at
                # No progress until the lease held at the start has expired and the other
                # process has had time to see it so (it looks every poll_s, 0.1 s).
                while time.time() < expires_at + 1.0:
                    time.sleep(0.05)
                raise RuntimeError("the stand-in stops here (the job ran)")
            finally:
                with lock:
                    running.remove(holder)
        return run

    runners, engines = _two_runners(pg_database, tmp_path, training, ttl_s=ttl_s)
    try:
        for r in runners:
            r.start()
        ids = []
        for i in range(2):
            with Session(engines[0]) as session:
                job = runners[0].submit(session, name=f"m{i}", request=TrainingRequest(
                    devices=["pump-1"], spec={"window": 8, "epochs": 1}))
                ids.append(job.id)

        def finished() -> list[TrainingJob] | None:
            with Session(engines[0]) as session:
                jobs = [session.get(TrainingJob, i) for i in ids]
                return jobs if all(j is not None and j.status in ("failed", "succeeded")
                                   for j in jobs) else None

        jobs = wait_for(finished, timeout=120, what="both jobs finished")
        assert not overlaps, "two trainings ran at the same time"
        assert len(set(ran)) == 1, f"the lease changed hands while its holder lived: {ran}"
        assert all("the stand-in stops here" in (j.error or "") for j in jobs), \
            [j.error for j in jobs]
    finally:
        for r in runners:
            r.stop()
        for e in engines:
            e.dispose()
