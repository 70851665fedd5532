"""Training jobs: start from stored telemetry, follow progress, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from sqlmodel import col, select

from cloud_hub.api.convert import job_public
from cloud_hub.api.deps import AdminKey, HubDep, ReadKey, SessionDep
from cloud_hub.api.schemas import TrainingJobCreate, TrainingJobPublic
from cloud_hub.db.registry_tables import TrainingJob
from cloud_hub.jobs.training import spec_from_dict

router = APIRouter(prefix="/training-jobs", tags=["training"])
JobPath = Annotated[int, Path(ge=1)]


@router.post("", response_model=TrainingJobPublic, status_code=status.HTTP_202_ACCEPTED)
def create_job(body: TrainingJobCreate, session: SessionDep, hub: HubDep,
               _key: AdminKey) -> TrainingJobPublic:
    """Queue a training run; follow it with ``GET /training-jobs/{id}``."""
    try:
        spec_from_dict(body.spec)
    except (TypeError, ValueError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "spec"], "msg": str(exc), "type": "value_error"}],
        ) from None
    if body.since is not None and body.until is not None and body.until < body.since:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "until"], "msg": f"until {body.until} is before since "
              f"{body.since}", "type": "value_error"}],
        )
    job = hub.jobs.submit(session, name=body.name, request=body.model_dump(mode="json"))
    return job_public(job)


@router.get("", response_model=list[TrainingJobPublic])
def jobs(session: SessionDep, _key: ReadKey) -> list[TrainingJobPublic]:
    return [job_public(j) for j in session.exec(select(TrainingJob).order_by(
        col(TrainingJob.id).desc()))]


@router.get("/{job_id}", response_model=TrainingJobPublic)
def job(job_id: JobPath, session: SessionDep, _key: ReadKey) -> TrainingJobPublic:
    record = session.get(TrainingJob, job_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"training job {job_id} does not exist")
    return job_public(record)


@router.post("/{job_id}/cancel", response_model=TrainingJobPublic)
def cancel(job_id: JobPath, session: SessionDep, hub: HubDep,
           _key: AdminKey) -> TrainingJobPublic:
    record = session.get(TrainingJob, job_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"training job {job_id} does not exist")
    if record.status not in ("queued", "running"):
        raise HTTPException(status.HTTP_409_CONFLICT, f"training job {job_id} is {record.status}")
    hub.jobs.cancel(job_id)
    session.refresh(record)
    return job_public(record)
