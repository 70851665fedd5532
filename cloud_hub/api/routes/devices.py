"""Devices: the twin view (desired vs reported), groups/tags, and setting desired."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from cloud_hub.api.convert import device_public
from cloud_hub.api.deps import AdminKey, HubDep, ReadKey, SessionDep
from cloud_hub.api.errors import errors
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.api.schemas import DesiredUpdate, DevicePublic, DeviceUpdate
from cloud_hub.db.conflicts import conflicts_of
from cloud_hub.db.enrollments import NotEnrolled, require_enrolled
from cloud_hub.db.queries import page_devices
from cloud_hub.db.tables import Device
from cloud_hub.keys.ring import KeyUnavailable
from cloud_hub.mqtt.publisher import PublishError
from cloud_hub.registry.lifecycle import ModelNotFound, PublishRefused
from cloud_hub.rollouts.desired import set_desired
from shared.messages import ModelRef
from shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/devices", tags=["devices"])
DeviceIdPath = Annotated[str, Path(pattern=rf"^{DEVICE_ID_PATTERN}$")]


def _get(session: SessionDep, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is unknown")
    return device


MAX_DEVICES = 1000


@router.get("", response_model=list[DevicePublic], responses=PAGE_HEADERS)
def devices(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    group: str | None = None, tag: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_DEVICES)] = 100,
    cursor: CursorQuery = None,
) -> list[DevicePublic]:
    """Devices in id order, a page at a time (``cursor`` from ``X-Next-Cursor``)."""
    rows = paged(request, response, cursor, lambda after: page_devices(
        session, group=group, tag=tag, limit=limit, after=after))
    conflicts = conflicts_of(session, [d.device_id for d in rows])
    return [device_public(d, conflicts.get(d.device_id)) for d in rows]


def _public(session: SessionDep, device: Device) -> DevicePublic:
    return device_public(device, conflicts_of(session, [device.device_id]).get(device.device_id))


@router.get("/{device_id}", response_model=DevicePublic, responses=errors(404))
def device(device_id: str, session: SessionDep, _key: ReadKey) -> DevicePublic:
    """One device; ``conflict`` says when two sources use its id."""
    return _public(session, _get(session, device_id))


@router.patch("/{device_id}", response_model=DevicePublic, responses=errors(404))
def update_device(
    device_id: str, body: DeviceUpdate, session: SessionDep, _key: AdminKey
) -> DevicePublic:
    """Set the device's group and/or tags (fields left out are unchanged)."""
    device = _get(session, device_id)
    if "group" in body.model_fields_set:
        device.group = body.group
    if body.tags is not None:
        device.tags = sorted(set(body.tags))
    session.add(device)
    session.commit()
    session.refresh(device)
    return _public(session, device)


@router.put("/{device_id}/desired", response_model=DevicePublic,
            responses=errors(404, 409, 503))
def put_desired(
    device_id: DeviceIdPath, body: DesiredUpdate, session: SessionDep, hub: HubDep,
    _key: AdminKey,
) -> DevicePublic:
    """Publish a retained ``desired`` for this device (it need not have connected yet, but it
    must be enrolled: an id nobody enrolled, a typo say, would get a device row and a retained
    ``desired`` that no device reads)."""
    try:
        require_enrolled(session, [device_id], "desired")
    except NotEnrolled as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    model = ModelRef(name=body.model.name, version=body.model.version,
                     variant=body.model.variant) if body.model else None
    try:
        set_desired(session, releases=hub.releases, device_ids=[device_id], model=model,
                    config=body.config)
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except PublishRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (PublishError, KeyUnavailable) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return _public(session, _get(session, device_id))
