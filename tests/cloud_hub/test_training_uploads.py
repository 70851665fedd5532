"""Uploaded training data lives in the database with its job (``training_uploads``): a CSV
taken by one hub process is trained on by whichever process sharing the database runs the job,
with no shared folder; a job queued before uploads moved there still reads its file; an upload
that is nowhere fails its job saying so; retention deletes an upload with its job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_hub.core.states import JobStatus
from cloud_hub.db.ops_tables import JobLease
from cloud_hub.db.registry_tables import TrainingJob, TrainingUpload
from cloud_hub.jobs.request import TrainingRequest, UploadedSet
from cloud_hub.jobs.training import JobRunner
from cloud_hub.jobs.upload_store import new_upload
from cloud_hub.maintenance.retention import RetentionPolicy, prune
from tests.cloud_hub.helpers import wait_for
from tests.pg import hub_engines

pytestmark = pytest.mark.hub

DAY = 86_400.0


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


def _run_until_finished(runner: JobRunner, engine: Engine, job_id: int) -> TrainingJob:
    runner.start()
    try:
        return wait_for(lambda: _finished(engine, job_id), timeout=60,
                        what=f"training job {job_id} to finish")
    finally:
        runner.stop()


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
    with hub_engines(kind, tmp_path, 2) as (here, there):
        taker = _runner(here, tmp_path, "hub-a", _Trained())  # takes the upload, never runs
        trained = _Trained()
        worker = _runner(there, tmp_path, "hub-b", trained)
        job_id = _submit(taker, here, values)
        assert not (tmp_path / "hub-a" / "uploads").exists()  # no file: a row
        job = _run_until_finished(worker, there, job_id)
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
    with hub_engines("sqlite", tmp_path, 1) as (engine,):
        trained = _Trained()
        runner = _runner(engine, tmp_path, "hub-a", trained)
        job_id = _submit(runner, engine, None, file="legacy.npy")
        runner.start()
        try:
            wait_for(lambda: _finished(engine, job_id), timeout=60, what="the job to finish")
            # read, then deleted once its job is over; the folder goes with its last file
            wait_for(lambda: not (tmp_path / "hub-a" / "uploads").exists(), timeout=30,
                     what="the legacy folder to be deleted")
        finally:
            runner.stop()
        np.testing.assert_array_equal(trained.given[0][0], values)


def test_legacy_files_no_unfinished_job_names_are_deleted_when_the_worker_starts(
        tmp_path: Path) -> None:
    folder = tmp_path / "hub-a" / "uploads"
    folder.mkdir(parents=True)
    for name in ("queued.npy", "finished.npy", "nobodys.npy"):
        np.save(folder / name, np.ones((64, 2), dtype=np.float32))
    (folder / "notes.txt").write_text("not an upload: left alone")
    with hub_engines("sqlite", tmp_path, 1) as (engine,):
        runner = JobRunner(engine, register=lambda *a: ("m", 1), run_training=_Trained(),
                           uploads_dir=folder, holder="hub-a", lease_ttl_s=2.0, poll_s=0.1)
        done = _submit(runner, engine, None, file="finished.npy")
        with Session(engine) as session:
            job = session.get(TrainingJob, done)
            assert job is not None
            job.status, job.finished_at = JobStatus.SUCCEEDED, time.time()
            session.add(job)
            session.commit()
        queued = _submit(runner, engine, None, file="queued.npy")
        with Session(engine) as session:  # the lease held elsewhere: this worker runs nothing
            session.add(JobLease(name="training", holder="hub-b", expires_at=time.time() + 3600))
            session.commit()
        runner.start()
        try:
            wait_for(lambda: sorted(p.name for p in folder.iterdir())
                     == ["notes.txt", "queued.npy"], timeout=30,
                     what="the files of no unfinished job to be deleted")
        finally:
            runner.stop()
        with Session(engine) as session:
            job = session.get(TrainingJob, queued)
            assert job is not None and job.status == JobStatus.QUEUED


def test_an_upload_that_is_nowhere_fails_its_job_saying_so(tmp_path: Path) -> None:
    with hub_engines("sqlite", tmp_path, 1) as (engine,):
        trained = _Trained()
        runner = _runner(engine, tmp_path, "hub-a", trained)
        job_id = _submit(runner, engine, None, file="0123abcd.npy")
        job = _run_until_finished(runner, engine, job_id)
        assert job.status == JobStatus.FAILED
        assert "0123abcd.npy is not in the database" in str(job.error)
        assert not trained.given


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_retention_deletes_an_upload_with_its_job(kind: str, tmp_path: Path) -> None:
    values = np.zeros((64, 2), dtype=np.float32)
    now = time.time()
    with hub_engines(kind, tmp_path, 1) as (engine,):
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
