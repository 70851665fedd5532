"""Uploaded training data lives in the database with its job (``training_uploads``): a CSV
taken by one hub process is trained on by whichever process sharing the database runs the job,
with no shared folder; a job queued before uploads moved there still reads its file; an upload
that is nowhere fails its job saying so; retention deletes an upload with its job."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_hub.core.states import JobStatus
from cloud_hub.db.engine import make_engine
from cloud_hub.db.registry_tables import TrainingJob, TrainingUpload
from cloud_hub.jobs.request import TrainingRequest, UploadedSet
from cloud_hub.jobs.training import JobRunner
from cloud_hub.jobs.upload_store import new_upload
from cloud_hub.maintenance.retention import RetentionPolicy, prune
from tests.cloud_hub.helpers import wait_for
from tests.pg import made_pg_database

pytestmark = pytest.mark.hub

DAY = 86_400.0


@contextlib.contextmanager
def _engines(kind: str, tmp_path: Path, n: int = 1) -> Iterator[list[Engine]]:
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'hub.db'}" if kind == "sqlite"
               else stack.enter_context(made_pg_database()))
        engines = [make_engine(url) for _ in range(n)]
        try:
            yield engines
        finally:
            for engine in engines:
                engine.dispose()


class _Trained:
    """Stands in for the training pipeline: keeps what each job was given, then stops it."""

    def __init__(self) -> None:
        self.given: list[tuple[np.ndarray, list[str]]] = []

    def __call__(self, readings: np.ndarray, channels: list[str], *args: Any,
                 **kwargs: Any) -> Any:
        self.given.append((readings, channels))
        raise RuntimeError("the stand-in stops here (the job read its data)")


def _runner(engine: Engine, tmp_path: Path, name: str, trained: _Trained) -> JobRunner:
    return JobRunner(engine, register=lambda *a: ("m", 1), run_training=trained,
                     uploads_dir=tmp_path / name / "uploads", holder=name, lease_ttl_s=2.0,
                     poll_s=0.1)


def _finished(engine: Engine, job_id: int) -> TrainingJob | None:
    with Session(engine) as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        return job if job.status in (JobStatus.FAILED, JobStatus.SUCCEEDED) else None


def _submit(runner: JobRunner, engine: Engine, values: np.ndarray | None,
            file: str | None = None) -> int:
    upload = new_upload(values) if values is not None else None
    name = upload.name if upload is not None else file
    assert name is not None
    request = TrainingRequest(name="csv-ae", spec={"window": 8, "epochs": 1},
                              upload=UploadedSet(file=name, rows=64, channels=["a", "b"]))
    with Session(engine) as session:
        job = runner.submit(session, name="csv-ae", request=request, upload=upload)
        assert job.id is not None
        return job.id


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_upload_taken_by_one_hub_is_trained_on_by_another(kind: str, tmp_path: Path) -> None:
    values = np.arange(128, dtype=np.float32).reshape(64, 2)
    with _engines(kind, tmp_path, 2) as (here, there):
        taker = _runner(here, tmp_path, "hub-a", _Trained())  # takes the upload, never runs
        trained = _Trained()
        worker = _runner(there, tmp_path, "hub-b", trained)
        job_id = _submit(taker, here, values)
        assert not (tmp_path / "hub-a" / "uploads").exists()  # no file: a row
        worker.start()
        try:
            job = wait_for(lambda: _finished(there, job_id), timeout=60,
                           what="the other hub's runner to run the job")
        finally:
            worker.stop()
        assert "the stand-in stops here" in str(job.error)
        assert len(trained.given) == 1
        readings, channels = trained.given[0]
        np.testing.assert_array_equal(readings, values)
        assert channels == ["a", "b"]
        with Session(there) as session:
            stored = session.exec(select(TrainingUpload)).all()
        assert [(u.job_id, u.rows) for u in stored] == [(job_id, 64)]


def test_a_job_queued_before_the_upgrade_reads_its_file(tmp_path: Path) -> None:
    values = np.ones((64, 2), dtype=np.float32)
    (tmp_path / "hub-a" / "uploads").mkdir(parents=True)
    np.save(tmp_path / "hub-a" / "uploads" / "legacy.npy", values)
    with _engines("sqlite", tmp_path) as (engine,):
        trained = _Trained()
        runner = _runner(engine, tmp_path, "hub-a", trained)
        job_id = _submit(runner, engine, None, file="legacy.npy")
        runner.start()
        try:
            wait_for(lambda: _finished(engine, job_id), timeout=60, what="the job to run")
        finally:
            runner.stop()
        np.testing.assert_array_equal(trained.given[0][0], values)


def test_an_upload_that_is_nowhere_fails_its_job_saying_so(tmp_path: Path) -> None:
    with _engines("sqlite", tmp_path) as (engine,):
        trained = _Trained()
        runner = _runner(engine, tmp_path, "hub-a", trained)
        job_id = _submit(runner, engine, None, file="0123abcd.npy")
        runner.start()
        try:
            job = wait_for(lambda: _finished(engine, job_id), timeout=60, what="the job to fail")
        finally:
            runner.stop()
        assert job.status == JobStatus.FAILED
        assert "0123abcd.npy is not in the database" in str(job.error)
        assert not trained.given


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_retention_deletes_an_upload_with_its_job(kind: str, tmp_path: Path) -> None:
    values = np.zeros((64, 2), dtype=np.float32)
    now = time.time()
    with _engines(kind, tmp_path) as (engine,):
        runner = _runner(engine, tmp_path, "hub-a", _Trained())  # never started
        old_job = _submit(runner, engine, values)
        live_job = _submit(runner, engine, values)
        with Session(engine) as session:
            job = session.get(TrainingJob, old_job)
            assert job is not None
            job.status, job.finished_at = JobStatus.FAILED, now - 100 * DAY
            session.add(job)
            # an upload whose job was never stored (the request failed between the two)
            orphan, fresh_orphan = new_upload(values), new_upload(values)
            orphan.created_at = now - 2 * DAY
            kept_orphan = fresh_orphan.name
            session.add(orphan)
            session.add(fresh_orphan)
            session.commit()
        with engine.begin() as conn:
            done = prune(conn, RetentionPolicy(jobs_days=90), now=now)
        assert done["training_jobs"] == 1
        assert done["training_uploads"] == 2
        with Session(engine) as session:
            left = session.exec(select(TrainingUpload)).all()
        by_job = {u.job_id: u.name for u in left}
        assert len(left) == 2 and set(by_job) == {live_job, None}
        assert by_job[None] == kept_orphan
