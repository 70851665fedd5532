"""Bulk enrollment as a background job: a status the API shows while the broker works.

With mosquitto 2.0's dynamic-security plugin, every created identity rewrites the plugin's whole
JSON file, so the k-th device costs in proportion to k: 1,000 devices took 70 s to 235 s of
wall time on 2 loaded cores (about 55 s of broker CPU), longer than an HTTP client waits. A job
answers at once; its status (stage, devices done of total) is polled; the bundles are collected
once it has succeeded.

The job lives in the database (``enrollment_jobs``), so that with several hub processes behind
a balancer any of them answers for it. It runs in the process that took it. If that process
stops or goes silent (``hub_processes``), the job is reported failed.

The bundles hold the devices' passwords. They are stored only sealed (Fernet: AES-128-CBC
with an HMAC), with a key made for the job and handed once to the caller that started it
(``collect_key``). The hub does not keep that key once the job has ended. Whichever process
the caller reaches opens the bundles with the key it brings, once, and drops them; uncollected
ones are dropped ``keep_s`` after the job ended. The devices stay enrolled either way: revoke
and enroll again to get a new credential.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.core.states import EnrollmentJobStatus
from cloud_hub.db.ops_tables import EnrollmentJobRecord, HubProcessRecord
from cloud_hub.identity.enrollment import (
    Bundle,
    DeviceEnrollment,
    EnrollmentPlan,
    EnrollmentProgress,
)
from cloud_hub.metrics.processes import process_views

__all__ = ["BundlesGone", "EnrollmentJob", "EnrollmentJobStatus", "EnrollmentJobs",
           "StartedJob", "WrongCollectKey"]

log = logging.getLogger(__name__)

_KEEP_S = 900.0  # bundles not collected are dropped this long after their job ended
_MAX_JOBS = 100  # finished jobs kept for their status (the oldest go first)
_PROGRESS_EVERY_S = 0.5  # progress written at most this often (and at each new stage)


class BundlesGone(LookupError):
    """The job's bundles are not there: not ready yet, collected already, or expired."""


class WrongCollectKey(PermissionError):
    """The key brought does not open the job's bundles."""


@dataclass(frozen=True)
class EnrollmentJob:
    id: str
    devices_total: int
    status: EnrollmentJobStatus
    stage: str
    devices_done: int
    error: str | None
    created_at: float
    finished_at: float | None
    bundles_ready: bool
    bundles_collected: bool

    @classmethod
    def of(cls, row: EnrollmentJobRecord) -> EnrollmentJob:
        return cls(id=row.id, devices_total=row.devices_total, status=row.status,
                   stage=row.stage, devices_done=row.devices_done, error=row.error,
                   created_at=row.created_at, finished_at=row.finished_at,
                   bundles_ready=row.sealed is not None,
                   bundles_collected=row.bundles_collected)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StartedJob:
    job: EnrollmentJob
    collect_key: str  # opens the bundles; shown once, kept by no hub


class EnrollmentJobs:
    """Bulk enrollments of this process, each run in a thread of its own (the broker takes
    their commands one enrollment at a time), and every process's jobs, read from the
    database."""

    def __init__(self, enrollment: DeviceEnrollment, engine: Engine, *, holder: str,
                 keep_s: float = _KEEP_S) -> None:
        self.enrollment = enrollment
        self.keep_s = keep_s
        self._engine = engine
        self._holder = holder
        self._lock = threading.Lock()  # one submit at a time here (one_at_a_time: anywhere)

    def submit(self, device_ids: list[str], **options: Any) -> StartedJob:
        """Check the enrollment now (its errors are raised here, as by ``enroll``) and run it
        in the background; a device that a running job enrolls is a ``FileExistsError``."""
        from cloud_hub.db.migrate import one_at_a_time  # Alembic loads where a schema is made

        key = Fernet.generate_key()
        now = time.time()
        # The checks and the row in one turn across the processes sharing the database: two
        # jobs started at once through two of them never both take a device (the second finds
        # it busy, or enrolled by then).
        with self._lock, one_at_a_time(self._engine), Session(self._engine) as session:
            self._forget_old(session, now)
            self._refuse_busy(session, device_ids, now)
            plan = self.enrollment.prepare(device_ids, **options)
            row = EnrollmentJobRecord(
                id=secrets.token_hex(8), holder=self._holder,
                status=EnrollmentJobStatus.RUNNING, stage="queued",
                devices_total=len(device_ids), device_ids=list(device_ids), created_at=now)
            session.add(row)
            session.commit()
            session.refresh(row)
            job = EnrollmentJob.of(row)
        threading.Thread(target=self._run, args=(job.id, plan, key), name=f"enroll-{job.id}",
                         daemon=True).start()
        return StartedJob(job, key.decode())

    def refuse_busy(self, device_ids: Sequence[str]) -> None:
        """Raise ``FileExistsError`` if a running job, of any process, enrolls one of these."""
        with Session(self._engine) as session:
            self._refuse_busy(session, device_ids, time.time())

    def get(self, job_id: str) -> EnrollmentJob:
        with Session(self._engine) as session:
            return EnrollmentJob.of(self._row(session, job_id, time.time()))

    def collect(self, job_id: str, collect_key: str) -> list[Bundle]:
        """The job's bundles, once, opened with the key its start handed out: the hub keeps
        no device password after that."""
        with Session(self._engine) as session:
            row = self._row(session, job_id, time.time())
            if row.sealed is None:
                if row.bundles_collected:
                    raise BundlesGone(f"the bundles of job {job_id} were collected already")
                if row.status == EnrollmentJobStatus.SUCCEEDED:
                    raise BundlesGone(f"the bundles of job {job_id} expired uncollected; "
                                      "revoke and enroll the devices again")
                raise BundlesGone(f"job {job_id} is {row.status}: no bundles"
                                  + (f" ({row.error})" if row.error else ""))
            try:
                opened = Fernet(collect_key.encode()).decrypt(row.sealed)
            except (InvalidToken, ValueError):
                raise WrongCollectKey(
                    f"the collect key does not open the bundles of job {job_id}: send the "
                    "collect_key that POST /enrollment-jobs answered when it started") from None
            taken = session.exec(
                update(EnrollmentJobRecord)
                .where(col(EnrollmentJobRecord.id) == job_id,
                       col(EnrollmentJobRecord.sealed).is_not(None))
                .values(sealed=None, sealed_until=None, bundles_collected=True)).rowcount
            session.commit()
        if not taken:  # another request took them between the read and the update
            raise BundlesGone(f"the bundles of job {job_id} were collected already")
        return [Bundle(**b) for b in json.loads(opened)]

    # -- the job's thread --------------------------------------------------------------------
    def _run(self, job_id: str, plan: EnrollmentPlan, key: bytes) -> None:
        last: dict[str, Any] = {"stage": "queued", "at": 0.0}

        def progress(p: EnrollmentProgress) -> None:
            now = time.monotonic()
            if p.stage == last["stage"] and now - last["at"] < _PROGRESS_EVERY_S:
                return
            last["stage"], last["at"] = p.stage, now
            self._write(job_id, stage=p.stage, devices_done=p.done)

        try:
            bundles = self.enrollment.carry_out(plan, progress)
        except Exception as exc:
            log.warning("enrollment job %s failed: %s", job_id, exc)
            self._write(job_id, status=EnrollmentJobStatus.FAILED, error=str(exc),
                        finished_at=time.time())
            return
        sealed = Fernet(key).encrypt(json.dumps([b.to_dict() for b in bundles]).encode())
        now = time.time()
        self._write(job_id, status=EnrollmentJobStatus.SUCCEEDED, stage="done",
                    devices_done=len(bundles), sealed=sealed, sealed_until=now + self.keep_s,
                    finished_at=now)

    def _write(self, job_id: str, **values: Any) -> None:
        """Write the job's progress; its end (a ``status``) is tried for a minute, as the
        database may be away for a moment: until then the job reads as running."""
        tries = 60 if "status" in values else 1
        for attempt in range(1, tries + 1):
            try:
                with Session(self._engine) as session:
                    session.exec(update(EnrollmentJobRecord)
                                 .where(col(EnrollmentJobRecord.id) == job_id)
                                 .values(**values))
                    session.commit()
                return
            except Exception as exc:
                if attempt == tries:
                    log.error("enrollment job %s: its status could not be written (%s)",
                              job_id, exc)
                    return
                time.sleep(1.0)

    # -- reading -------------------------------------------------------------------------
    def _row(self, session: Session, job_id: str, now: float) -> EnrollmentJobRecord:
        row = session.get(EnrollmentJobRecord, job_id)
        if row is None:
            raise KeyError(f"no enrollment job {job_id!r}")
        changes: dict[str, Any] = {}
        if row.sealed is not None and row.sealed_until is not None and now > row.sealed_until:
            changes.update(sealed=None, sealed_until=None)
        elif row.status == EnrollmentJobStatus.RUNNING:
            gone = self._holder_gone(session, row.holder, now)
            if gone:
                changes.update(status=EnrollmentJobStatus.FAILED, finished_at=now, error=(
                    f"the hub process running it ({gone}): some of its devices may have "
                    "a broker credential; revoke them and enroll them again"))
        if changes:
            session.exec(update(EnrollmentJobRecord)
                         .where(col(EnrollmentJobRecord.id) == job_id,
                                col(EnrollmentJobRecord.status) == row.status)
                         .values(**changes))
            session.commit()
            session.refresh(row)
        return row

    def _holder_gone(self, session: Session, holder: str, now: float) -> str | None:
        """What became of the process running a job, if it stopped or went silent; None while
        it runs, or before its first report (``hub_processes``)."""
        if holder == self._holder:
            return None
        record = session.get(HubProcessRecord, holder)
        if record is None:
            return None
        view = process_views(session, [record], now=now)[0]
        if view.state == "running":
            return None
        return f"{record.host} pid {record.pid}, {view.state}"

    def _refuse_busy(self, session: Session, device_ids: Sequence[str], now: float) -> None:
        running = session.exec(select(EnrollmentJobRecord).where(
            col(EnrollmentJobRecord.status) == EnrollmentJobStatus.RUNNING)).all()
        live = {holder for holder in {row.holder for row in running}  # each process once
                if not self._holder_gone(session, holder, now)}
        busy_ids = {d for row in running if row.holder in live for d in row.device_ids}
        busy = sorted(busy_ids.intersection(device_ids))
        if busy:
            raise FileExistsError(f"device(s) {busy[:10]} are being enrolled by another job")

    def _forget_old(self, session: Session, now: float) -> None:
        """Drop uncollected bundles past their time, and finished jobs past the newest
        ``_MAX_JOBS``."""
        session.exec(update(EnrollmentJobRecord)
                     .where(col(EnrollmentJobRecord.sealed_until) < now)
                     .values(sealed=None, sealed_until=None))
        old = session.exec(select(EnrollmentJobRecord.id).where(
            col(EnrollmentJobRecord.status) != EnrollmentJobStatus.RUNNING)
            .order_by(col(EnrollmentJobRecord.created_at).desc()).offset(_MAX_JOBS)).all()
        if old:
            session.exec(delete(EnrollmentJobRecord)
                         .where(col(EnrollmentJobRecord.id).in_(old)))
        session.commit()
