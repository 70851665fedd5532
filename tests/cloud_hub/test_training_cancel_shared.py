"""A training job is cancelled through any hub process sharing the database: a queued one in
the database, a running one here at once, and one running in another process through
``cancel_requested_at``, which that process polls. Until this, a cancel that the balancer
sent to a process other than the one running the job answered 200 and the job ran on."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.core.states import JobStatus
from cloud_hub.db.registry_tables import TrainingJob
from cloud_hub.jobs.request import TrainingRequest, UploadedSet
from cloud_hub.jobs.training import JobRunner
from cloud_hub.jobs.upload_store import new_upload
from cloud_hub.training.errors import TrainingCancelled
from tests.cloud_hub.helpers import wait_for
from tests.pg import hub_engines

pytestmark = pytest.mark.hub


class _UntilCancelled:
    """Stands in for training: runs until its cancel event is set (or gives up)."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def __call__(self, *args: Any, cancel: threading.Event, **kwargs: Any) -> Any:
        self.started.set()
        if cancel.wait(60):
            raise TrainingCancelled("training cancelled")
        raise AssertionError("the cancel never reached the running job")


def _status(engine: Engine, job_id: int) -> JobStatus:
    with Session(engine) as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        return job.status


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("submitted_on", ["the canceller", "the runner"])
def test_a_job_running_in_one_process_is_cancelled_through_another(
        kind: str, submitted_on: str, tmp_path: Path) -> None:
    with hub_engines(kind, tmp_path, 2) as (here, there):
        training = _UntilCancelled()
        canceller = JobRunner(here, register=lambda *a: ("m", 1), holder="hub-a",
                              poll_s=0.1)  # never started: it takes requests, runs nothing
        runner = JobRunner(there, register=lambda *a: ("m", 1), run_training=training,
                           holder="hub-b", lease_ttl_s=5.0, poll_s=0.1)
        submitter, engine = (canceller, here) if submitted_on == "the canceller" \
            else (runner, there)
        upload = new_upload(np.zeros((64, 2), dtype=np.float32))
        with Session(engine) as session:
            job = submitter.submit(session, name="m", upload=upload, request=TrainingRequest(
                name="m", spec={"window": 8, "epochs": 1}, upload=UploadedSet(
                    file=upload.name, rows=64, channels=["a", "b"])))
        assert job.id is not None
        runner.start()
        try:
            assert training.started.wait(60), _status(there, job.id)
            assert canceller.cancel(job.id)  # asked, through the process not running it
            wait_for(lambda: _status(here, job.id) == JobStatus.CANCELLED, timeout=60,
                     what="the job, running in the other process, cancelled")
        finally:
            runner.stop()
        assert not canceller.cancel(job.id)  # over: nothing to ask
