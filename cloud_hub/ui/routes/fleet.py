"""The fleet (counts per state, filters, pages) and one device (live charts, model, health)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, select

from cloud_hub.api.deps import SessionDep
from cloud_hub.core.states import DevicePresence
from cloud_hub.db.registry_tables import Rollout, RolloutDevice
from cloud_hub.db.tables import Device, TelemetryBatchRow
from cloud_hub.incidents.queries import list_incidents
from cloud_hub.ui.charts import chart_data
from cloud_hub.ui.live import SILENT_AFTER_S
from cloud_hub.ui.queries import FleetFilter, fleet_page
from cloud_hub.ui.render import fragment, page
from cloud_hub.ui.security import UiUser
from shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/ui", include_in_schema=False)
DevicePath = Annotated[str, Path(pattern=rf"^{DEVICE_ID_PATTERN}$")]
PageQuery = Annotated[int, Query(ge=1, le=100_000)]
PER_PAGE = 50
WINDOW_CHOICES = {"5m": 300, "15m": 900, "1h": 3600, "6h": 21600}


def _fleet(request: Request, session: Session, page_no: int) -> dict[str, Any]:
    f = FleetFilter.from_query(dict(request.query_params))
    return {"fleet": fleet_page(session, f, page=page_no, per_page=PER_PAGE), "filter": f,
            "query": f.as_query()}


@router.get("/fleet", response_class=HTMLResponse)
def fleet(request: Request, viewer: UiUser, session: SessionDep, p: PageQuery = 1
          ) -> HTMLResponse:
    return page(request, "fleet.html", viewer, session, section="fleet",
                **_fleet(request, session, p))


@router.get("/fleet/rows", response_class=HTMLResponse)
def fleet_rows(request: Request, viewer: UiUser, session: SessionDep, p: PageQuery = 1
               ) -> HTMLResponse:
    """The counts and the table again (live refresh), with the same filters and page."""
    return fragment(request, "fleet_body.html", viewer, **_fleet(request, session, p))


def _device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is unknown")
    return device


def _model_history(session: Session, device_id: str) -> list[dict[str, Any]]:
    rows = session.exec(
        select(RolloutDevice, Rollout).join(Rollout, col(Rollout.id) == col(
            RolloutDevice.rollout_id)).where(RolloutDevice.device_id == device_id)
        .order_by(col(Rollout.id).desc()).limit(20))
    return [{"rollout": r, "member": m} for m, r in rows]


def _device_context(session: Session, device: Device) -> dict[str, Any]:
    now = time.time()
    state = (DevicePresence.ONLINE if device.online
             and (device.last_seen or 0) >= now - SILENT_AFTER_S
             else DevicePresence.SILENT if device.online else DevicePresence.OFFLINE)
    return {"device": device, "state": state, "heartbeat": device.heartbeat or {},
            "history": _model_history(session, device.device_id),
            "incidents": list_incidents(session, device_id=device.device_id, limit=10).items}


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(request: Request, device_id: DevicePath, viewer: UiUser, session: SessionDep,
                window: Annotated[str, Query(pattern="^(5m|15m|1h|6h)$")] = "15m"
                ) -> HTMLResponse:
    device = _device(session, device_id)
    return page(request, "device.html", viewer, session, live_device=device_id, section="fleet",
                window=window, windows=list(WINDOW_CHOICES), **_device_context(session, device))


@router.get("/devices/{device_id}/panel", response_class=HTMLResponse)
def device_panel(request: Request, device_id: DevicePath, viewer: UiUser,
                 session: SessionDep) -> HTMLResponse:
    """The device's status, model and health again (live refresh)."""
    device = _device(session, device_id)
    return fragment(request, "device_panel.html", viewer, **_device_context(session, device))


@router.get("/devices/{device_id}/chart.json")
def device_chart(device_id: DevicePath, _viewer: UiUser, session: SessionDep,
                 window: Annotated[str, Query(pattern="^(5m|15m|1h|6h)$")] = "15m"
                 ) -> dict[str, Any]:
    """Readings of the last ``window`` (ending at the device's latest reading), its anomaly
    events, the active model's normal band per channel and its threshold."""
    device = _device(session, device_id)
    latest = session.exec(select(TelemetryBatchRow.ts_last).where(
        TelemetryBatchRow.device_id == device_id).order_by(
        col(TelemetryBatchRow.ts_first).desc()).limit(1)).first()
    now = time.time()
    # The live window ends now; a device that went quiet shows its last readings instead.
    until = now if latest is None or latest >= now - WINDOW_CHOICES[window] else latest
    return chart_data(session, device_id=device_id, since=until - WINDOW_CHOICES[window],
                      until=until, model=(device.active_name, device.active_version))
