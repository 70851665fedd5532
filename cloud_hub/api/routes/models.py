"""The model registry: list, show, download, compare, publish, retire."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import load_only
from sqlmodel import col, or_, select

from cloud_hub.api.checks import refuse_unenrolled
from cloud_hub.api.convert import SUMMARY_COLUMNS, model_detail, model_summaries
from cloud_hub.api.deps import AdminKey, HubDep, IdPath, ReadKey, SessionDep
from cloud_hub.api.errors import ErrorBody, errors
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.api.schemas import ModelComparison, ModelDetail, ModelSummary
from cloud_hub.core.states import ModelStatus
from cloud_hub.db.enrollments import enrolled_among
from cloud_hub.db.paging import keyset_page
from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.db.tables import Device
from cloud_hub.keys.ring import KeyUnavailable
from cloud_hub.mqtt.publisher import PublishError
from cloud_hub.registry.compare import compare_versions
from cloud_hub.registry.lifecycle import (
    ModelNotFound,
    PublishRefused,
    get_model,
    publish_model,
    retire_model,
)
from cloud_hub.rollouts.desired import set_desired
from shared.messages import ModelRef
from shared.topics import DEVICE_ID_PATTERN, MODEL_NAME_PATTERN

router = APIRouter(prefix="/models", tags=["models"])
NamePath = Annotated[str, Path(pattern=rf"^{MODEL_NAME_PATTERN}$")]
VersionPath = IdPath


def _get(session: SessionDep, name: str, version: int) -> ModelVersion:
    try:
        return get_model(session, name=name, version=version)
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


MAX_MODELS = 1000


@router.get("", response_model=list[ModelSummary], responses=PAGE_HEADERS)
def models(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    name: str | None = None,
    model_status: Annotated[str | None, Query(alias="status",
                                              pattern="^(draft|published|retired)$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_MODELS)] = 100,
    cursor: CursorQuery = None,
) -> list[ModelSummary]:
    """Versions by name and version; only the summary columns are read (never the model)."""
    stmt = select(ModelVersion).options(
        load_only(*[getattr(ModelVersion, c) for c in SUMMARY_COLUMNS]))
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    if model_status is not None:
        stmt = stmt.where(ModelVersion.status == model_status)
    order = [col(ModelVersion.name), col(ModelVersion.version)]
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, stmt, order=order, limit=limit, after=after))
    return model_summaries(session, rows)


# name:version, the version as a path would take it (1 to 999,999,999)
_REF = rf"^{MODEL_NAME_PATTERN}:[1-9][0-9]{{0,8}}$"


@router.get("/compare", response_model=ModelComparison, responses=errors(404))
def compare(
    session: SessionDep, _key: ReadKey,
    a: Annotated[str, Query(pattern=_REF, examples=["pump-ae:2"])],
    b: Annotated[str, Query(pattern=_REF, examples=["pump-ae:3"])],
) -> dict[str, Any]:
    """Two versions side by side (``name:version`` each), with what differs."""
    left = _get(session, *_split(a))
    right = _get(session, *_split(b))
    return compare_versions(left, right)


def _split(ref: str) -> tuple[str, int]:
    name, _, version = ref.rpartition(":")
    return name, int(version)


@router.get("/{name}/{version}", response_model=ModelDetail, responses=errors(404))
def model(name: NamePath, version: VersionPath, session: SessionDep,
          _key: ReadKey) -> ModelDetail:
    return model_detail(session, _get(session, name, version))


@router.get("/{name}/{version}/tflite", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, **errors(404)})
def download(name: NamePath, version: VersionPath, session: SessionDep,
             _key: ReadKey) -> Response:
    record = _get(session, name, version)
    return Response(
        record.tflite, media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}-v{version}.tflite"',
                 "X-Sha256": record.sha256},
    )


@router.post("/{name}/{version}/publish", response_model=ModelDetail,
             responses={**errors(404, 503), 409: {
                 "model": ErrorBody,
                 "description": "the parity gate failed or the model is retired"}})
def publish(name: NamePath, version: VersionPath, session: SessionDep, hub: HubDep,
            _key: AdminKey) -> ModelDetail:
    """Retain the signed manifest and the chunks on the broker (refused if parity failed)."""
    _get(session, name, version)
    try:
        record = publish_model(session, name=name, version=version, releases=hub.releases)
    except PublishRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            {"message": str(exc), **exc.figure}) from None
    except (PublishError, KeyUnavailable) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return model_detail(session, record)


@router.post("/{name}/{version}/retire", response_model=ModelDetail,
             responses={**errors(404, 503), 409: {
                 "model": ErrorBody, "description": "the version is already retired"}})
def retire(name: NamePath, version: VersionPath, session: SessionDep, hub: HubDep,
           _key: AdminKey) -> ModelDetail:
    """Clear the retained manifest and chunks; the version stays in the registry as retired."""
    record = _get(session, name, version)
    if record.status == ModelStatus.RETIRED:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"model {name} v{version} is already retired (at {record.retired_at})")
    try:
        record = retire_model(session, name=name, version=version, publisher=hub.publisher)
    except PublishError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return model_detail(session, record)


class ModelRollback(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"devices": ["pump-001", "pump-002"]}, {}]})
    devices: list[Annotated[str, Field(pattern=rf"^{DEVICE_ID_PATTERN}$")]] | None = Field(
        default=None, min_length=1, max_length=10_000,
        description="default: every enrolled device told to run, or running, a version of it")


class RollbackDone(BaseModel):
    name: str
    version: int
    release: int
    devices: list[str]


@router.post("/{name}/{version}/rollback", response_model=RollbackDone,
             responses={**errors(404, 503), 409: {
                 "model": ErrorBody,
                 "description": "never released, the parity gate failed, or (no devices "
                                "given) no enrolled device runs or is told to run the model"}})
def rollback(name: NamePath, version: VersionPath, body: ModelRollback, session: SessionDep,
             hub: HubDep, _key: AdminKey) -> RollbackDone:
    """Send devices back to this version: it goes out as a new signed release (a higher release
    number than what they run, which they refuse otherwise) and their ``desired`` points to it.
    """
    record = _get(session, name, version)
    if record.status == ModelStatus.DRAFT:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"model {name} v{version} was never published; nothing to go back to")
    devices = body.devices
    if devices is not None:
        refuse_unenrolled(session, devices, ["body", "devices"])
    else:
        named = set(session.exec(select(Device.device_id).where(or_(
            Device.desired_name == name, Device.active_name == name))))
        devices = sorted(enrolled_among(session, named))
        if not devices:  # a new release that no device is sent would only bump the number
            raise HTTPException(status.HTTP_409_CONFLICT, (
                f"no enrolled device runs or is told to run model {name}: nothing to roll "
                "back; name the devices in `devices`"))
    try:
        set_desired(session, releases=hub.releases, device_ids=devices,
                    model=ModelRef(name=name, version=version), require_published=False,
                    reason="rollback")
    except PublishRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (PublishError, KeyUnavailable) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    session.refresh(record)
    return RollbackDone(name=name, version=version, release=int(record.manifest["release"]),
                        devices=devices)
