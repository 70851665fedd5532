"""The model registry: versions, quantization modes side by side, parity, devices per version."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy import func
from sqlmodel import col, select

from cloud_hub.api.deps import SessionDep
from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.db.tables import Device
from cloud_hub.registry.lifecycle import ModelNotFound, get_model
from cloud_hub.ui.render import page
from cloud_hub.ui.security import UiUser
from shared.topics import MODEL_NAME_PATTERN

router = APIRouter(prefix="/ui", include_in_schema=False)
NamePath = Annotated[str, Path(pattern=rf"^{MODEL_NAME_PATTERN}$")]
VersionPath = Annotated[int, Path(ge=1)]
# The registry's columns the pages show (never the model bytes).
_SUMMARY: tuple[Any, ...] = (
            ModelVersion.id, ModelVersion.name, ModelVersion.version, ModelVersion.status,
            ModelVersion.family, ModelVersion.quantization, ModelVersion.size_bytes,
            ModelVersion.float_size_bytes, ModelVersion.threshold, ModelVersion.parity,
            ModelVersion.parity_passed, ModelVersion.created_at, ModelVersion.published_at,
            ModelVersion.channels)


def _running(session: SessionDep, name: str | None = None) -> dict[tuple[str, int], int]:
    stmt = select(Device.active_name, Device.active_version, func.count()).where(
        col(Device.active_name).is_not(None))
    if name is not None:
        stmt = stmt.where(Device.active_name == name)
    rows = session.exec(stmt.group_by(col(Device.active_name), col(Device.active_version)))
    return {(str(n), int(v or 0)): int(c) for n, v, c in rows}


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, viewer: UiUser, session: SessionDep) -> HTMLResponse:
    stmt = select(*_SUMMARY)
    rows = session.exec(stmt.order_by(col(ModelVersion.name), col(ModelVersion.version).desc())
                        .limit(500))
    return page(request, "models.html", viewer, session, section="models", models=list(rows),
                running=_running(session))


@router.get("/models/{name}/{version}", response_class=HTMLResponse)
def model(request: Request, name: NamePath, version: VersionPath, viewer: UiUser,
          session: SessionDep) -> HTMLResponse:
    try:
        record = get_model(session, name=name, version=version)
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    devices = list(session.exec(select(Device.device_id).where(
        Device.active_name == name, Device.active_version == version)
        .order_by(col(Device.device_id)).limit(200)))
    desired = int(session.exec(select(func.count()).select_from(Device).where(
        Device.desired_name == name, Device.desired_version == version)).one())
    versions = list(session.exec(select(ModelVersion.version, ModelVersion.status).where(
        ModelVersion.name == name).order_by(col(ModelVersion.version).desc())))
    return page(request, "model.html", viewer, session, section="models", model=record,
                modes=record.extra.get("modes") or [], devices=devices, desired=desired,
                versions=versions, running=_running(session, name))
