"""Bulk enrollment jobs live in the database: a job started through one hub process is
followed and collected through another (a balancer in front of several), with the key its
start handed out; the hub keeps its bundles only sealed with that key. A job whose process
stopped reads as failed and no longer holds its devices; uncollected bundles expire."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db.engine import make_engine
from cloud_hub.db.ops_tables import EnrollmentJobRecord, HubProcessRecord
from cloud_hub.identity.enrollment_jobs import (
    BundlesGone,
    EnrollmentJob,
    EnrollmentJobs,
    WrongCollectKey,
)
from cloud_hub.service import Hub
from tests.cloud_hub.helpers import wait_for

pytestmark = pytest.mark.hub


@pytest.fixture
def other_engine(hub: Hub) -> Iterator[Engine]:
    """Another process's engine on the hub's database (its own pool)."""
    engine = make_engine(hub.settings.resolved_database_url)
    yield engine
    engine.dispose()


def _finished(jobs: EnrollmentJobs, job_id: str) -> EnrollmentJob | None:
    job = jobs.get(job_id)
    return job if job.status != "running" else None


def test_a_job_started_on_one_process_is_followed_and_collected_on_another(
        hub: Hub, other_engine: Engine) -> None:
    here = hub.enrollment_jobs
    there = EnrollmentJobs(hub.enrollment, other_engine, holder="other-host:77:beef")
    started = here.submit(["shared-1", "shared-2", "shared-3"])
    assert started.job.status == "running" and started.job.devices_total == 3
    with pytest.raises(FileExistsError, match="shared-2"):  # busy, whichever process asks
        there.refuse_busy(["shared-2"])
    done = wait_for(lambda: _finished(there, started.job.id), 60, "the job, seen from there")
    assert done.status == "succeeded" and done.devices_done == 3 and done.bundles_ready

    with Session(other_engine) as session:  # at rest, only sealed: no password in the clear
        row = session.get(EnrollmentJobRecord, started.job.id)
        assert row is not None and row.sealed is not None
        assert b"password" not in row.sealed and b"shared-1" not in row.sealed
    with pytest.raises(WrongCollectKey):
        there.collect(started.job.id, Fernet.generate_key().decode())
    with pytest.raises(WrongCollectKey):
        there.collect(started.job.id, "not a key")
    bundles = there.collect(started.job.id, started.collect_key)
    assert sorted(b.device_id for b in bundles) == ["shared-1", "shared-2", "shared-3"]
    assert all(b.password for b in bundles)
    with pytest.raises(BundlesGone, match="collected already"):
        here.collect(started.job.id, started.collect_key)
    seen = here.get(started.job.id)
    assert seen.bundles_collected and not seen.bundles_ready
    with Session(other_engine) as session:
        row = session.get(EnrollmentJobRecord, started.job.id)
        assert row is not None and row.sealed is None


def test_a_job_whose_process_stopped_reads_failed_and_frees_its_devices(
        hub: Hub, other_engine: Engine) -> None:
    now = time.time()
    with Session(other_engine) as session:
        session.add(HubProcessRecord(holder="gone-host:12:dead", client_id="hub-b",
                                     host="gone-host", pid=12, version="0.1.0",
                                     started_at=now - 600, seen_at=now - 60,
                                     stopped_at=now - 60, report_s=10.0, figures={}))
        session.add(EnrollmentJobRecord(id="0123456789abcdef", holder="gone-host:12:dead",
                                        status="running", stage="credentials",
                                        devices_total=2, devices_done=1,
                                        device_ids=["half-1", "half-2"], created_at=now - 120))
        session.commit()
    hub.enrollment_jobs.refuse_busy(["half-1"])  # not busy: its process is gone
    job = hub.enrollment_jobs.get("0123456789abcdef")
    assert job.status == "failed" and job.finished_at is not None
    assert "gone-host pid 12, stopped" in str(job.error) and "revoke" in str(job.error)
    with pytest.raises(BundlesGone, match="is failed"):
        hub.enrollment_jobs.collect("0123456789abcdef", Fernet.generate_key().decode())
    with pytest.raises(KeyError, match="no enrollment job"):
        hub.enrollment_jobs.get("fedcba9876543210")


def test_bundles_not_collected_in_time_are_dropped(hub: Hub, other_engine: Engine) -> None:
    jobs = EnrollmentJobs(hub.enrollment, other_engine, holder=hub.holder, keep_s=0.0)
    started = jobs.submit(["late-1"])
    wait_for(lambda: _finished(jobs, started.job.id), 60, "the job")
    time.sleep(0.01)  # past keep_s (0) after the job ended
    with pytest.raises(BundlesGone, match="expired uncollected"):
        jobs.collect(started.job.id, started.collect_key)
    with Session(other_engine) as session:
        row = session.get(EnrollmentJobRecord, started.job.id)
        assert row is not None and row.sealed is None and not row.bundles_collected


def test_two_processes_starting_jobs_for_one_device_at_once_start_one(
        hub: Hub, other_engine: Engine) -> None:
    processes = [hub.enrollment_jobs,
                 EnrollmentJobs(hub.enrollment, other_engine, holder="other-host:77:beef")]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def start(jobs: EnrollmentJobs) -> None:
        barrier.wait()
        try:
            started = jobs.submit([f"both-{i}" for i in range(10)])
        except FileExistsError as exc:
            outcomes.append(f"refused: {exc}")
        else:
            outcomes.append(f"started {started.job.id}")

    threads = [threading.Thread(target=start, args=(jobs,)) for jobs in processes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(o.split(" ")[0] for o in outcomes) == ["refused:", "started"], outcomes
    assert "both-" in next(o for o in outcomes if o.startswith("refused"))
    job_id = next(o.split(" ")[1] for o in outcomes if o.startswith("started"))
    assert wait_for(lambda: _finished(hub.enrollment_jobs, job_id), 60,
                    "the one job").status == "succeeded"
