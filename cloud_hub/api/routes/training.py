"""Training jobs: start from stored telemetry, follow progress, cancel."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from sqlmodel import Session, col, select

from cloud_hub.api.convert import job_public
from cloud_hub.api.deps import AdminKey, HubDep, ReadKey, SessionDep
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.api.schemas import TrainingJobCreate, TrainingJobPublic
from cloud_hub.db.paging import keyset_page
from cloud_hub.db.registry_tables import TrainingJob
from cloud_hub.jobs.training import spec_from_dict
from cloud_hub.jobs.upload import CsvError, parse_training_csv, save_upload
from shared.topics import MODEL_NAME_PATTERN

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


@router.post("/csv", response_model=TrainingJobPublic, status_code=status.HTTP_202_ACCEPTED,
             openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {
                 "schema": {"type": "string"},
                 "example": "ts,pressure,flow\n1700000000.0,2.01,0.52\n1700000000.1,2.03,0.51\n",
             }}}})
async def create_job_from_csv(
    request: Request, hub: HubDep, _key: AdminKey,
    name: Annotated[str, Query(pattern=rf"^{MODEL_NAME_PATTERN}$")],
    channels: Annotated[str | None, Query(description="comma-separated; default all")] = None,
    spec: Annotated[str | None, Query(description="TrainingSpec fields as JSON")] = None,
) -> TrainingJobPublic:
    """Train on an uploaded CSV (header line; a ts/time column is ignored)."""
    body = await request.body()  # BodySizeLimit refused it already above max_upload_bytes
    try:
        spec_data = json.loads(spec) if spec else {}
        if not isinstance(spec_data, dict):
            raise ValueError(f"spec must be a JSON object, got {spec!r}")
        spec_from_dict(spec_data)
    except (TypeError, ValueError) as exc:
        raise _unprocessable(["query", "spec"], str(exc)) from None
    try:
        values, names = parse_training_csv(
            body.decode("utf-8"), channels.split(",") if channels else None)
    except (CsvError, UnicodeDecodeError) as exc:
        raise _unprocessable(["body"], str(exc)) from None
    stored = save_upload(hub.jobs.uploads_dir, values)
    request_data = {"name": name, "spec": spec_data,
                    "upload": {"file": stored, "rows": len(values), "channels": names}}
    with Session(hub.engine) as session:
        job = hub.jobs.submit(session, name=name, request=request_data)
        return job_public(job)


def _unprocessable(loc: list[str], message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         [{"loc": loc, "msg": message, "type": "value_error"}])


MAX_JOBS = 1000


@router.get("", response_model=list[TrainingJobPublic], responses=PAGE_HEADERS)
def jobs(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS)] = 100,
    cursor: CursorQuery = None,
) -> list[TrainingJobPublic]:
    """Newest first."""
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, select(TrainingJob), order=[col(TrainingJob.id)], limit=limit, after=after,
        descending=True))
    return [job_public(j) for j in rows]


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
