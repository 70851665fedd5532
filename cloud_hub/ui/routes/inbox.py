"""The inbox: incidents (and their anomaly events) newest first, live; one incident with its
chart, events, and the acknowledge / resolve actions (the same functions as the REST API)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from cloud_hub.api.deps import HubDep, SessionDep
from cloud_hub.db.ops_tables import Incident
from cloud_hub.incidents import actions
from cloud_hub.incidents.queries import (
    count_by_state,
    incident_events,
    list_deliveries,
    list_events,
    list_incidents,
)
from cloud_hub.ui.charts import chart_data, sparklines
from cloud_hub.ui.render import fragment, page
from cloud_hub.ui.security import AdminUser, FormData, UiUser, form_data
from shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/ui", include_in_schema=False)
IncidentPath = Annotated[int, Path(ge=1)]
PageQuery = Annotated[int, Query(ge=1, le=100_000)]
StateQuery = Annotated[str, Query(pattern="^(active|open|acknowledged|resolved|all)$")]
DeviceQuery = Annotated[str | None, Query(pattern=rf"^{DEVICE_ID_PATTERN}$")]
FormDep = Annotated[FormData, Depends(form_data)]
PER_PAGE = 50


def _rows(session: Session, view: str, state: str, device: str | None, page_no: int
          ) -> dict[str, Any]:
    query = {k: v for k, v in (("view", view), ("state", state), ("device", device)) if v}
    if view == "events":
        listing: Any = list_events(session, device_id=device, limit=PER_PAGE,
                                   offset=(page_no - 1) * PER_PAGE)
        return {"listing": listing, "view": view, "state": state, "device": device,
                "query": query, "page_no": page_no}
    listing = list_incidents(session, state=None if state == "all" else state,
                             device_id=device, limit=PER_PAGE, offset=(page_no - 1) * PER_PAGE)
    lines = sparklines(session, [(i.device_id, i.started_at, i.ended_at, i.channels)
                                 for i in listing.items])
    sparks = {i.id: line for i, line in zip(listing.items, lines, strict=True)}
    return {"listing": listing, "sparks": sparks, "view": view, "state": state,
            "device": device, "query": query, "page_no": page_no}


@router.get("/inbox", response_class=HTMLResponse)
def inbox(request: Request, viewer: UiUser, session: SessionDep,
          view: Annotated[str, Query(pattern="^(incidents|events)$")] = "incidents",
          state: StateQuery = "active", device: DeviceQuery = None, p: PageQuery = 1
          ) -> HTMLResponse:
    return page(request, "inbox.html", viewer, session, section="inbox",
                counts=count_by_state(session), **_rows(session, view, state, device, p))


@router.get("/inbox/rows", response_class=HTMLResponse)
def inbox_rows(request: Request, viewer: UiUser, session: SessionDep,
               view: Annotated[str, Query(pattern="^(incidents|events)$")] = "incidents",
               state: StateQuery = "active", device: DeviceQuery = None, p: PageQuery = 1
               ) -> HTMLResponse:
    """The list again (live refresh)."""
    return fragment(request, "inbox_body.html", viewer, counts=count_by_state(session),
                    **_rows(session, view, state, device, p))


def _incident(session: Session, incident_id: int) -> Incident:
    try:
        return actions.get_incident(session, incident_id)
    except actions.IncidentNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


def _incident_context(session: Session, incident: Incident) -> dict[str, Any]:
    assert incident.id is not None
    return {"incident": incident, "events": incident_events(session, incident.id, limit=200),
            "deliveries": list_deliveries(session, incident_id=incident.id, limit=20).items}


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
def incident_page(request: Request, incident_id: IncidentPath, viewer: UiUser,
                  session: SessionDep) -> HTMLResponse:
    incident = _incident(session, incident_id)
    return page(request, "incident.html", viewer, session, section="inbox",
                **_incident_context(session, incident))


@router.get("/incidents/{incident_id}/panel", response_class=HTMLResponse)
def incident_panel(request: Request, incident_id: IncidentPath, viewer: UiUser,
                   session: SessionDep) -> HTMLResponse:
    incident = _incident(session, incident_id)
    return fragment(request, "incident_panel.html", viewer,
                    **_incident_context(session, incident))


@router.get("/incidents/{incident_id}/chart.json")
def incident_chart(incident_id: IncidentPath, _viewer: UiUser, session: SessionDep
                   ) -> dict[str, Any]:
    """Readings around the incident (half its length, at least 60 s, on each side) with its
    events and the model's band and threshold."""
    i = _incident(session, incident_id)
    pad = max((i.ended_at - i.started_at) * 0.5, 60.0)
    channels = i.channels[:4] or None
    return chart_data(session, device_id=i.device_id, since=i.started_at - pad,
                      until=i.ended_at + pad, channels=channels,
                      model=(i.model_name, i.model_version), incident_id=i.id)


def _act(request: Request, action: Any, incident_id: int, viewer: AdminUser, form: FormData,
         session: Session, hub: HubDep) -> Response:
    _incident(session, incident_id)
    try:
        incident = action(session, incident_id, by=viewer.name, note=form.get("note"))
    except actions.IncidentConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    hub.notifier.wake()
    if request.headers.get("hx-request") == "true":
        return fragment(request, "incident_panel.html", viewer,
                        **_incident_context(session, incident))
    return RedirectResponse(f"/ui/incidents/{incident_id}", status_code=303)


@router.post("/incidents/{incident_id}/acknowledge", response_model=None)
def acknowledge(request: Request, incident_id: IncidentPath, viewer: AdminUser, form: FormDep,
                session: SessionDep, hub: HubDep) -> Response:
    return _act(request, actions.acknowledge, incident_id, viewer, form, session, hub)


@router.post("/incidents/{incident_id}/resolve", response_model=None)
def resolve(request: Request, incident_id: IncidentPath, viewer: AdminUser, form: FormDep,
            session: SessionDep, hub: HubDep) -> Response:
    return _act(request, actions.resolve, incident_id, viewer, form, session, hub)
