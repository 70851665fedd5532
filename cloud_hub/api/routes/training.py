"""Training jobs: start from stored telemetry, follow progress, cancel."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import ValidationError
from sqlmodel import Session, col, select

from cloud_hub.api.checks import refuse_unenrolled
from cloud_hub.api.convert import job_public
from cloud_hub.api.deps import AdminKey, HubDep, IdPath, ReadKey, SessionDep
from cloud_hub.api.errors import errors
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.api.schemas import TrainingJobCreate, TrainingJobPublic, TrainingSpecBody
from cloud_hub.db.paging import keyset_page
from cloud_hub.db.queries import count_readings
from cloud_hub.db.registry_tables import TrainingJob
from cloud_hub.jobs.request import TrainingRequest, UploadedSet
from cloud_hub.jobs.upload import CsvError, parse_training_csv
from cloud_hub.jobs.upload_store import new_upload
from shared.topics import MODEL_NAME_PATTERN

router = APIRouter(prefix="/training-jobs", tags=["training"])
JobPath = IdPath


def _spec_request(spec: TrainingSpecBody, loc: list[str | int],
                  floor: float) -> dict[str, Any]:
    """The spec fields as asked, with the hub's parity floor applied (422 below it)."""
    if "min_agreement" in spec.model_fields_set and spec.min_agreement < floor:
        raise _unprocessable([*loc, "min_agreement"], (
            f"min_agreement {spec.min_agreement} is below the hub's parity floor {floor} "
            "(EDGELOOP_MIN_PARITY_AGREEMENT); a request may only ask for a stricter gate"))
    data = spec.model_dump(mode="json", exclude_unset=True)
    if "min_agreement" not in data and floor > spec.min_agreement:
        data["min_agreement"] = floor  # the default gate is below this hub's floor
    return data


@router.post("", response_model=TrainingJobPublic, status_code=status.HTTP_202_ACCEPTED)
def create_job(body: TrainingJobCreate, session: SessionDep, hub: HubDep,
               _key: AdminKey) -> TrainingJobPublic:
    """Queue a training run; follow it with ``GET /training-jobs/{id}``.

    Every spec field has bounds (a 422 names the field and the bound); ``min_agreement``
    cannot go below the hub's parity floor; ``devices`` must be enrolled (a 422 names each
    that is not); the devices and time range must select at least one stored reading and
    at most ``EDGELOOP_TRAINING_MAX_READINGS``.
    """
    if body.since is not None and body.until is not None and body.until < body.since:
        raise _unprocessable(["body", "until"],
                             f"until {body.until} is before since {body.since}")
    if body.devices is not None:  # the job would only fail, naming them
        refuse_unenrolled(session, body.devices, ["body", "devices"])
    settings = hub.settings
    spec = _spec_request(body.spec, ["body", "spec"], settings.min_parity_agreement)
    selected = count_readings(session, device_ids=body.devices, since=body.since,
                              until=body.until)
    if selected == 0:  # the job would only fail, saying so
        raise _unprocessable(["body", "devices"], (
            f"devices={body.devices or 'all'} since={body.since} until={body.until} select no "
            "stored readings: nothing to train on (GET /api/v1/devices shows what each device "
            "has sent)"))
    if selected > settings.training_max_readings:
        raise _unprocessable(["body", "devices"], (
            f"devices={body.devices or 'all'} since={body.since} until={body.until} select "
            f"{selected} readings; a training job may load at most "
            f"{settings.training_max_readings} (EDGELOOP_TRAINING_MAX_READINGS): narrow the "
            "devices or the time range"))
    request = TrainingRequest(name=body.name, devices=body.devices, channels=body.channels,
                              since=body.since, until=body.until, spec=spec)
    job = hub.jobs.submit(session, name=body.name, request=request)
    return job_public(job)


@router.post("/csv", response_model=TrainingJobPublic, status_code=status.HTTP_202_ACCEPTED,
             openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {
                 "schema": {"type": "string"},
                 "example": "ts,pressure,flow\n1700000000.0,2.01,0.52\n1700000000.1,2.03,0.51\n",
             }}}})
async def create_job_from_csv(
    request: Request, hub: HubDep, _key: AdminKey,
    name: Annotated[str, Query(pattern=rf"^{MODEL_NAME_PATTERN}$")],
    channels: Annotated[str | None, Query(max_length=64 * 65,
                                          description="comma-separated; default all")] = None,
    spec: Annotated[str | None, Query(max_length=8192,
                                      description="TrainingSpec fields as JSON")] = None,
) -> TrainingJobPublic:
    """Train on an uploaded CSV (header line; a ts/time column is ignored).

    The body may be up to ``EDGELOOP_MAX_UPLOAD_BYTES`` and hold up to
    ``EDGELOOP_TRAINING_MAX_READINGS`` data rows.
    """
    body = await request.body()  # BodySizeLimit refused it already above max_upload_bytes
    settings = hub.settings
    try:
        spec_data = json.loads(spec) if spec else {}
    except ValueError as exc:
        raise _unprocessable(["query", "spec"], f"spec is not JSON: {exc}") from None
    try:
        spec_body = TrainingSpecBody.model_validate(spec_data)
    except ValidationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [
            {"loc": ["query", "spec", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()]) from None
    spec_request = _spec_request(spec_body, ["query", "spec"], settings.min_parity_agreement)
    try:
        values, names = parse_training_csv(
            body.decode("utf-8"), channels.split(",") if channels else None)
    except (CsvError, UnicodeDecodeError) as exc:
        raise _unprocessable(["body"], str(exc)) from None
    if len(values) > settings.training_max_readings:
        raise _unprocessable(["body"], (
            f"the CSV has {len(values)} data rows; a training job may load at most "
            f"{settings.training_max_readings} (EDGELOOP_TRAINING_MAX_READINGS)"))
    upload = new_upload(values)
    request_data = TrainingRequest(name=name, spec=spec_request, upload=UploadedSet(
        file=upload.name, rows=len(values), channels=names))
    with Session(hub.engine) as session:
        job = hub.jobs.submit(session, name=name, request=request_data, upload=upload)
        return job_public(job)


def _unprocessable(loc: list[str | int], message: str) -> HTTPException:
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


@router.get("/{job_id}", response_model=TrainingJobPublic, responses=errors(404))
def job(job_id: JobPath, session: SessionDep, _key: ReadKey) -> TrainingJobPublic:
    record = session.get(TrainingJob, job_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"training job {job_id} does not exist")
    return job_public(record)


@router.post("/{job_id}/cancel", response_model=TrainingJobPublic,
             responses=errors(404, 409))
def cancel(job_id: JobPath, session: SessionDep, hub: HubDep,
           _key: AdminKey) -> TrainingJobPublic:
    record = session.get(TrainingJob, job_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"training job {job_id} does not exist")
    if record.status.finished:
        raise HTTPException(status.HTTP_409_CONFLICT, f"training job {job_id} is {record.status}")
    hub.jobs.cancel(job_id)
    session.refresh(record)
    return job_public(record)
