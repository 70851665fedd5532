"""Bulk enrollment as a background job: a status the API shows while the broker works.

With mosquitto 2.0's dynamic-security plugin, every created identity rewrites the plugin's whole
JSON file, so the k-th device costs in proportion to k: 1,000 devices took 70 s to 235 s of
wall time on 2 loaded cores (about 55 s of broker CPU), longer than an HTTP client waits. A job
answers at once; its status (stage, devices done of total) is polled; the bundles are collected
once it has succeeded.

The bundles hold the devices' passwords, so they live in this process's memory only, until
collected once or until ``keep_s`` after the job ended, and are gone with a restart of the hub
(the devices stay enrolled: revoke and enroll again to get a new credential). So does the job's
status: with several hub processes, a job is followed and collected through the process that
runs it (docs/scaling.md, step 5).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cloud_hub.identity.enrollment import (
    Bundle,
    DeviceEnrollment,
    EnrollmentPlan,
    EnrollmentProgress,
)

__all__ = ["BundlesGone", "EnrollmentJob", "EnrollmentJobStatus", "EnrollmentJobs"]

log = logging.getLogger(__name__)

_KEEP_S = 900.0  # bundles not collected are dropped this long after their job ended
_MAX_JOBS = 100  # finished jobs kept for their status (the oldest go first)


class EnrollmentJobStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self is not EnrollmentJobStatus.RUNNING


class BundlesGone(LookupError):
    """The job's bundles are not there: not ready yet, collected already, or expired."""


@dataclass
class EnrollmentJob:
    id: str
    devices_total: int
    status: EnrollmentJobStatus = EnrollmentJobStatus.RUNNING
    stage: str = "queued"
    devices_done: int = 0
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    bundles_collected: bool = False
    _bundles: list[Bundle] | None = field(default=None, repr=False)
    _device_ids: frozenset[str] = field(default_factory=frozenset, repr=False)

    @property
    def bundles_ready(self) -> bool:
        return self._bundles is not None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status.value, "stage": self.stage,
                "devices_total": self.devices_total, "devices_done": self.devices_done,
                "error": self.error, "created_at": self.created_at,
                "finished_at": self.finished_at, "bundles_ready": self.bundles_ready,
                "bundles_collected": self.bundles_collected}


class EnrollmentJobs:
    """Bulk enrollments running in the background, one thread each (the broker takes their
    commands one enrollment at a time)."""

    def __init__(self, enrollment: DeviceEnrollment, *, keep_s: float = _KEEP_S) -> None:
        self.enrollment = enrollment
        self.keep_s = keep_s
        self._jobs: dict[str, EnrollmentJob] = {}
        self._lock = threading.Lock()

    def submit(self, device_ids: list[str], **options: Any) -> EnrollmentJob:
        """Check the enrollment now (its errors are raised here, as by ``enroll``) and run it
        in the background; a device another running job enrolls is a ``FileExistsError``."""
        plan = self.enrollment.prepare(device_ids, **options)
        with self._lock:
            self._forget_old()
            self._refuse_busy(device_ids)
            job = EnrollmentJob(id=secrets.token_hex(8), devices_total=len(device_ids),
                                _device_ids=frozenset(device_ids))
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, plan), name=f"enroll-{job.id}",
                         daemon=True).start()
        return job

    def refuse_busy(self, device_ids: list[str]) -> None:
        """Raise ``FileExistsError`` if a running job enrolls one of these devices."""
        with self._lock:
            self._refuse_busy(device_ids)

    def _refuse_busy(self, device_ids: list[str]) -> None:
        running: set[str] = set().union(
            *(j._device_ids for j in self._jobs.values() if not j.status.finished))
        busy = sorted(running.intersection(device_ids))
        if busy:
            raise FileExistsError(f"device(s) {busy[:10]} are being enrolled by another job")

    def _run(self, job: EnrollmentJob, plan: EnrollmentPlan) -> None:
        def progress(p: EnrollmentProgress) -> None:
            job.stage, job.devices_done = p.stage, p.done

        try:
            bundles = self.enrollment.carry_out(plan, progress)
        except Exception as exc:
            log.warning("enrollment job %s failed: %s", job.id, exc)
            job.error, job.status = str(exc), EnrollmentJobStatus.FAILED
        else:
            job._bundles = bundles
            job.stage, job.devices_done = "done", job.devices_total
            job.status = EnrollmentJobStatus.SUCCEEDED
        job.finished_at = time.time()

    def get(self, job_id: str) -> EnrollmentJob:
        with self._lock:
            self._forget_old()
            try:
                return self._jobs[job_id]
            except KeyError:
                raise KeyError(
                    f"no enrollment job {job_id!r} in this hub process. A bulk enrollment job "
                    "lives in the process that runs it: with several hub processes behind a "
                    "balancer, send every /api/v1/enrollment-jobs request to one of them "
                    "(docs/scaling.md, step 5)") from None

    def collect(self, job_id: str) -> list[Bundle]:
        """The job's bundles, once: the hub keeps no device password after handing it out."""
        job = self.get(job_id)
        with self._lock:
            if job._bundles is None:
                if job.bundles_collected:
                    raise BundlesGone(f"the bundles of job {job_id} were collected already")
                if job.status is EnrollmentJobStatus.SUCCEEDED:
                    raise BundlesGone(f"the bundles of job {job_id} expired uncollected; "
                                      "revoke and enroll the devices again")
                raise BundlesGone(f"job {job_id} is {job.status.value}: no bundles"
                                  + (f" ({job.error})" if job.error else ""))
            bundles, job._bundles, job.bundles_collected = job._bundles, None, True
            return bundles

    def _forget_old(self) -> None:
        now = time.time()
        for job in self._jobs.values():
            if job.finished_at is not None and job._bundles is not None \
                    and now - job.finished_at > self.keep_s:
                job._bundles = None
        finished = sorted((j for j in self._jobs.values() if j.status.finished),
                          key=lambda j: j.created_at)
        for job in finished[:max(0, len(self._jobs) - _MAX_JOBS)]:
            del self._jobs[job.id]
