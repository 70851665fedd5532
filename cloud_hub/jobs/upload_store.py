"""Uploaded training data, stored as .npy bytes in the database (``training_uploads``) with
the job that trains on it, so that whichever hub process sharing the database runs the job
reads it; deleted with the job (:mod:`cloud_hub.maintenance.retention`). Files that jobs
queued before that change left in a process's ``DATA_DIR/uploads`` are deleted once no
unfinished job names them (:func:`prune_legacy_uploads`)."""

from __future__ import annotations

import io
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlmodel import Session, col, select

from cloud_hub.core.states import JobStatus
from cloud_hub.db.registry_tables import TrainingJob, TrainingUpload
from cloud_hub.jobs.upload import CsvError

__all__ = ["UploadMissing", "load_upload", "new_upload", "prune_legacy_uploads"]

log = logging.getLogger(__name__)


class UploadMissing(LookupError):
    """The upload a job names is neither in the database nor in this process's folder."""


def new_upload(values: npt.NDArray[np.float32]) -> TrainingUpload:
    """The row to store with the job that trains on ``values`` (:meth:`TrainingJobs.submit`)."""
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return TrainingUpload(name=f"{uuid.uuid4().hex}.npy", rows=len(values),
                          created_at=time.time(), data=buffer.getvalue())


def load_upload(session: Session, name: str,
                legacy_dir: Path | None = None) -> npt.NDArray[np.float32]:
    """The rows of upload ``name``. A job submitted before uploads moved into the database
    names a file in ``legacy_dir`` (``DATA_DIR/uploads`` of the process that took it)."""
    if "/" in name or name.startswith(".") or len(name) > 64:
        raise CsvError(f"upload name {name!r} is not valid")
    row = session.get(TrainingUpload, name)
    source: io.BytesIO | Path
    if row is not None:
        source = io.BytesIO(row.data)
    elif legacy_dir is not None and (legacy_dir / name).is_file():
        source = legacy_dir / name
    else:
        raise UploadMissing(f"the uploaded training data {name} is not in the database"
                            + (f" nor in {legacy_dir}" if legacy_dir is not None else ""))
    data: npt.NDArray[np.float32] = np.load(source, allow_pickle=False)
    return data


def prune_legacy_uploads(session: Session, folder: Path) -> list[str]:
    """Delete the ``.npy`` files in ``folder`` (a process's ``DATA_DIR/uploads``, where
    uploads lived before they moved into the database) that no queued or running job names,
    and the folder once it is empty; the names deleted. No upload is written there any more,
    so what a finished job left would stay for ever."""
    if not folder.is_dir():
        return []
    unfinished = session.exec(select(TrainingJob).where(
        col(TrainingJob.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]))).all()
    wanted = {job.request.upload.file for job in unfinished if job.request.upload is not None}
    deleted = []
    for path in sorted(folder.glob("*.npy")):
        if path.name not in wanted:
            path.unlink(missing_ok=True)
            deleted.append(path.name)
    if deleted:
        log.info("deleted %d training upload file(s) from %s that no unfinished job names "
                 "(uploads are kept in the database now)", len(deleted), folder)
    if not any(folder.iterdir()):
        folder.rmdir()
    return deleted
