"""Uploaded training data, stored as .npy bytes in the database (``training_uploads``) with
the job that trains on it, so that whichever hub process sharing the database runs the job
reads it; deleted with the job (:mod:`cloud_hub.maintenance.retention`)."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlmodel import Session

from cloud_hub.db.registry_tables import TrainingUpload
from cloud_hub.jobs.upload import CsvError

__all__ = ["UploadMissing", "load_upload", "new_upload"]


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
