"""Training jobs: run ``run_training`` on stored telemetry, one job at a time.

Jobs run one at a time, in order (training uses both cores), each in a child process
(:mod:`cloud_hub.jobs.child`) so TensorFlow never loads into the hub; a worker thread here waits
for it. Progress is written to the job row (at most a few times a second) so
``GET /training-jobs/{id}`` can show stage, epoch and loss. A job whose model cannot be published
(it failed the parity gate) ends as ``failed`` with the reason; its draft stays for inspection.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.core.states import JobStatus, TrainingStage
from cloud_hub.db.leases import Lease, LeaseLost
from cloud_hub.db.registry_tables import TrainingJob, TrainingUpload
from cloud_hub.jobs.leased import process_holder_id
from cloud_hub.jobs.request import TrainingRequest, UploadedSet, spec_from_dict
from cloud_hub.jobs.training_sets import TrainingDataError, load_federated_set, load_training_set
from cloud_hub.jobs.upload_store import UploadMissing, load_upload, prune_legacy_uploads
from cloud_hub.training.artifact import ModelArtifact, TrainingProgress, TrainingSpec

__all__ = ["JobRunner", "RunTraining", "TrainingDataError", "spec_from_dict"]

log = logging.getLogger(__name__)

RunTraining = Callable[..., ModelArtifact]
Register = Callable[[Session, ModelArtifact, str, dict[str, Any], int], tuple[str, int]]
_PROGRESS_EVERY_S = 0.25


def _default_run_training() -> RunTraining:
    from cloud_hub.jobs.child import train_in_child  # TensorFlow loads in the child only

    return train_in_child


class JobRunner:
    """Queue of training jobs served by one worker thread."""

    def __init__(
        self, engine: Engine, *, register: Register, run_training: RunTraining | None = None,
        uploads_dir: Path | None = None, min_agreement: float = 0.0,
        max_readings: int | None = None, holder: str | None = None,
        lease_ttl_s: float = 30.0, poll_s: float = 2.0,
        run_federated_training: Callable[..., ModelArtifact] | None = None,
    ) -> None:
        """``run_training`` replaces the child-process pipeline and runs in this process (the
        tests' stand-ins); by default each job trains in a child process."""
        self._engine = engine
        self._min_agreement = min_agreement  # the parity floor no request may go below
        self._max_readings = max_readings
        self.uploads_dir = uploads_dir or Path("uploads")
        self._register = register
        self._run_training = run_training
        self._run_federated_training = run_federated_training
        self._queue: queue.Queue[int | None] = queue.Queue()  # wakes the worker
        self._stopping = threading.Event()
        self._lease = Lease(engine, name="training", holder=holder or process_holder_id(),
                            ttl_s=lease_ttl_s)
        self._poll_s = poll_s
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._lead_lock = threading.Lock()  # the worker and a job's watch both keep the lease
        self._worker = threading.Thread(target=self._run, name="hub-training", daemon=True)

    @property
    def holding(self) -> bool:
        """This process holds the training lease (it runs the queued jobs)."""
        return self._lease.held

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            for event in self._cancel.values():
                event.set()
        self._queue.put(None)
        if self._worker.is_alive():
            self._worker.join(timeout)
        if not self._worker.is_alive():  # given up only once no tick can still run under it
            self._lease.release()

    def submit(self, session: Session, *, name: str, request: TrainingRequest,
               upload: TrainingUpload | None = None) -> TrainingJob:
        """Queue a job; ``upload``, the data it names (``request.upload``), is stored with it
        in one transaction. Commits ``session``."""
        job = self.add(session, name=name, request=request, upload=upload)
        session.commit()
        session.refresh(job)
        return job

    def add(self, session: Session, *, name: str, request: TrainingRequest,
            upload: TrainingUpload | None = None) -> TrainingJob:
        """:meth:`submit` without the commit: the job (with its id) joins ``session``'s
        transaction, so that what the caller records of it commits with it or not at all;
        the worker is woken once it commits (else it finds the job at its next poll)."""
        job = TrainingJob(name=name, request=request, created_at=time.time(),
                          progress={"stage": TrainingStage.QUEUED, "fraction": 0.0})
        session.add(job)
        session.flush()  # the job's id, which the upload and the caller keep
        if upload is not None:
            upload.job_id = job.id
            session.add(upload)
        job_id = job.id
        assert job_id is not None
        # its cancel event is made where it runs (_execute)
        event.listen(session, "after_commit", lambda _s: self._queue.put(job_id), once=True)
        return job

    def cancel(self, job_id: int) -> bool:
        """Ask a queued or running job to stop, whichever hub process took it or runs it;
        False when it is over. A queued job is cancelled in the database; a running one here
        at once, and in another process through ``cancel_requested_at``, which the process
        running it reads every ``poll_s``."""
        with self._lock:
            event = self._cancel.get(job_id)
        if event is not None:
            event.set()
        now = time.time()
        with Session(self._engine) as session:
            cancelled = session.exec(
                update(TrainingJob)
                .where(col(TrainingJob.id) == job_id,
                       col(TrainingJob.status) == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELLED, finished_at=now,
                        error="cancelled before it started")).rowcount
            asked = 0 if cancelled else session.exec(
                update(TrainingJob)
                .where(col(TrainingJob.id) == job_id,
                       col(TrainingJob.status) == JobStatus.RUNNING)
                .values(cancel_requested_at=now)).rowcount
            session.commit()
        return event is not None or bool(cancelled) or bool(asked)

    # -- worker --------------------------------------------------------------------------
    def _run(self) -> None:
        """Jobs run one at a time in the hub process that holds the ``training`` lease
        (several hub processes may share a database); each job is claimed with a
        conditional UPDATE, so it runs once whichever process claims it."""
        self._prune_legacy_uploads()
        while not self._stopping.is_set():
            try:
                wake = self._queue.get(timeout=self._poll_s)
            except queue.Empty:
                wake = 0
            if wake is None or self._stopping.is_set():
                return
            try:
                while not self._stopping.is_set() and self._lead():
                    job_id = self._claim_next()
                    if job_id is None:
                        break
                    try:
                        self._execute(job_id)
                    finally:
                        with self._lock:
                            self._cancel.pop(job_id, None)
                        self._prune_legacy_uploads()
            except LeaseLost as exc:  # another hub process runs the queue now
                self._lease.lost()
                log.warning("training worker: %s", exc)
            except Exception:  # never let one job (or a database hiccup) kill the worker
                log.exception("training worker: a job or its bookkeeping failed")

    def _prune_legacy_uploads(self) -> None:
        try:
            with Session(self._engine) as session:
                prune_legacy_uploads(session, self.uploads_dir)
        except Exception as exc:  # a folder or a database hiccup: the next job's end retries
            log.warning("training uploads in %s not pruned: %s", self.uploads_dir, exc)

    def _lead(self) -> bool:
        """Take or renew the training lease; on taking it over, jobs its previous holder
        left running are failed (that process is gone, and so is their child)."""
        with self._lead_lock:
            held = self._lease.keep()
            taken_over = self._lease.taken_over
        if taken_over:
            now = time.time()
            with self._lease.session() as session:
                session.exec(
                    update(TrainingJob)
                    .where(col(TrainingJob.status) == JobStatus.RUNNING)
                    .values(status=JobStatus.FAILED, finished_at=now,
                            error="the hub process running this job stopped"))
                session.commit()
        return held

    def _claim_next(self) -> int | None:
        with self._lease.session() as session:
            job_id = session.exec(select(TrainingJob.id).where(
                col(TrainingJob.status) == JobStatus.QUEUED
            ).order_by(col(TrainingJob.id))).first()
            if job_id is None:
                return None
            claimed = session.exec(
                update(TrainingJob)
                .where(col(TrainingJob.id) == job_id,
                       col(TrainingJob.status) == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, started_at=time.time())).rowcount
            session.commit()
        return job_id if claimed else self._claim_next()

    def _update(self, job_id: int, **changes: Any) -> None:
        """Write the running job's state; only while this process holds the lease (a job
        whose lease another process took over was failed by it, and keeps that end)."""
        with self._lease.session() as session:
            job = session.get(TrainingJob, job_id)
            if job is None:
                return
            for key, value in changes.items():
                setattr(job, key, value)
            session.add(job)
            session.commit()

    def _execute(self, job_id: int) -> None:
        """Run one job, with a watch on its ``cancel_requested_at``: the job may have been
        taken, and be cancelled, through another hub process."""
        with self._lock:
            cancel = self._cancel.setdefault(job_id, threading.Event())
        ended = threading.Event()
        threading.Thread(target=self._watch_cancel, args=(job_id, cancel, ended),
                         name=f"hub-training-cancel-{job_id}", daemon=True).start()
        try:
            self._execute_job(job_id, cancel)
        finally:
            ended.set()

    def _watch_cancel(self, job_id: int, cancel: threading.Event,
                      ended: threading.Event) -> None:
        """While the job runs: reads its ``cancel_requested_at``, and keeps the training lease
        (renewed when a third of its ttl has passed). Progress reports do not do it: a stage
        may report nothing for longer than the ttl (loading a large training set, converting
        and comparing the quantization modes), and another hub process would then take the
        lease over, fail this job and start the next at the same time."""
        while not ended.wait(self._poll_s):
            try:
                if not self._lead():  # taken over: the new holder failed this job
                    log.warning("training job %d: the training lease was taken over; the "
                                "job stops here", job_id)
                    cancel.set()
                    return
                with Session(self._engine) as session:
                    asked = session.exec(select(TrainingJob.cancel_requested_at).where(
                        col(TrainingJob.id) == job_id)).first()
            except Exception as exc:  # the database away for a moment: ask again
                log.debug("training job %d: lease or cancel not read (%s)", job_id, exc)
                continue
            if asked is not None:
                cancel.set()
                return

    def _execute_job(self, job_id: int, cancel: threading.Event) -> None:
        with Session(self._engine) as session:
            job = session.get(TrainingJob, job_id)
            if job is None:
                return
            request, name = job.request, job.name
        if cancel.is_set():
            self._update(job_id, status=JobStatus.CANCELLED, finished_at=time.time(),
                         error="cancelled before it started")
            return
        self._update(job_id, status=JobStatus.RUNNING, started_at=time.time(),
                     progress={"stage": TrainingStage.PREPARING, "fraction": 0.0})
        last_write = [0.0]
        latest: dict[str, Any] = {}

        def progress(p: TrainingProgress) -> None:
            latest.update(stage=p.stage, epochs=p.epochs, fraction=p.fraction)
            # later stages keep the last epoch
            if p.stage == TrainingStage.FITTING or "epoch" not in latest:
                latest["epoch"] = p.epoch
            if p.loss is not None:
                latest.update(loss=p.loss, val_loss=p.val_loss)
            now = time.monotonic()
            if now - last_write[0] < _PROGRESS_EVERY_S and p.stage == TrainingStage.FITTING:
                return
            last_write[0] = now
            try:
                self._update(job_id, progress=dict(latest))
            except LeaseLost:  # the job is another process's to end now: stop it
                cancel.set()

        try:
            spec = request.training_spec()
            if spec.min_agreement < self._min_agreement:
                log.warning("training job %d: min_agreement %s raised to the hub's parity "
                            "floor %s", job_id, spec.min_agreement, self._min_agreement)
                spec = replace(spec, min_agreement=self._min_agreement)
            if request.federated is not None:
                with Session(self._engine) as session:
                    stats, training = load_federated_set(session, request.federated)
                artifact = self._run_federated(stats, spec, progress=progress, cancel=cancel)
            else:
                if request.upload is not None:
                    readings, channels, segments, training = self._uploaded_set(
                        request.upload)
                else:
                    with Session(self._engine) as session:
                        readings, channels, segments, training = load_training_set(
                            session, request, max_readings=self._max_readings)
                run = self._run_training or _default_run_training()
                artifact = run(readings, channels, spec, segments=segments, progress=progress,
                               cancel=cancel)
            with self._lease.session() as session:
                model = self._register(session, artifact, name, training, job_id)
            unpublishable = artifact.parity.failure_reason()
        except LeaseLost:
            raise
        except Exception as exc:
            cancelled = type(exc).__name__ == "TrainingCancelled" or (
                cancel.is_set() and not isinstance(exc, TrainingDataError)
            )
            status = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
            if not cancelled:
                log.warning("training job %d failed: %s", job_id, exc)
            self._update(job_id, status=status, finished_at=time.time(),
                         error=f"{type(exc).__name__}: {exc}")
            return
        if unpublishable:
            log.warning("training job %d failed: model %s:%d cannot be published: %s", job_id,
                        model[0], model[1], unpublishable)
        self._update(job_id, status=JobStatus.FAILED if unpublishable else JobStatus.SUCCEEDED,
                     finished_at=time.time(), model_name=model[0], model_version=model[1],
                     progress={**latest, "stage": TrainingStage.DONE, "fraction": 1.0,
                               "quantization": artifact.extra.get("quantization_choice")},
                     error=f"model {model[0]}:{model[1]} cannot be published (it stays a draft "
                           f"to inspect): {unpublishable}" if unpublishable else None)


    def _run_federated(self, stats: Any, spec: TrainingSpec, **kwargs: Any) -> ModelArtifact:
        if self._run_federated_training is not None:
            artifact: ModelArtifact = self._run_federated_training(stats, spec, **kwargs)
            return artifact
        from cloud_hub.jobs.child import train_federated_in_child

        return train_federated_in_child(stats, spec, **kwargs)

    def _uploaded_set(
        self, upload: UploadedSet
    ) -> tuple[np.ndarray, list[str], list[int], dict[str, Any]]:
        try:
            with Session(self._engine) as session:
                readings = load_upload(session, upload.file, self.uploads_dir)
        except UploadMissing as exc:
            raise TrainingDataError(str(exc)) from None
        if self._max_readings is not None and len(readings) > self._max_readings:
            raise TrainingDataError(f"the upload has {len(readings)} rows; a training job may "
                                    f"load at most {self._max_readings}")
        channels = list(upload.channels)
        training = {"devices": [], "channels": channels, "source": "uploaded CSV",
                    "segments": [len(readings)]}
        return readings, channels, [len(readings)], training
