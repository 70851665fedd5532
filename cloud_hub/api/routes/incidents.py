"""Incidents: list (newest first, paginated), show with events, acknowledge, resolve."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from cloud_hub.api.deps import AdminKey, HubDep, IdPath, ReadKey, SessionDep
from cloud_hub.api.errors import errors
from cloud_hub.api.incident_schemas import IncidentAction, IncidentDetail, IncidentPublic
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.db.ops_tables import Incident
from cloud_hub.incidents import actions
from cloud_hub.incidents.queries import incident_events, incidents_page
from cloud_hub.incidents.views import event_view, incident_view
from shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/incidents", tags=["incidents"])
IncidentPath = IdPath


@router.get("", response_model=list[IncidentPublic], response_model_exclude_unset=True,
            responses=PAGE_HEADERS)
def incidents(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    state: Annotated[str | None, Query(pattern="^(open|acknowledged|resolved|active)$",
                                       description="`active` = open or acknowledged")] = None,
    device_id: Annotated[str | None, Query(pattern=rf"^{DEVICE_ID_PATTERN}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: CursorQuery = None,
) -> list[dict[str, Any]]:
    """Newest first; more pages through `X-Next-Cursor`."""
    rows = paged(request, response, cursor, lambda after: incidents_page(
        session, state=state, device_id=device_id, limit=limit, after=after))
    return [incident_view(i) for i in rows]


def _detail(session: SessionDep, incident: Incident) -> dict[str, Any]:
    assert incident.id is not None
    return {**incident_view(incident),
            "event_list": [event_view(a) for a in incident_events(session, incident.id)]}


def _get(session: SessionDep, incident_id: int) -> Incident:
    try:
        return actions.get_incident(session, incident_id)
    except actions.IncidentNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/{incident_id}", response_model=IncidentDetail, response_model_exclude_unset=True,
            responses=errors(404))
def incident(incident_id: IncidentPath, session: SessionDep, _key: ReadKey) -> dict[str, Any]:
    return _detail(session, _get(session, incident_id))


def _act(action: Any, incident_id: int, body: IncidentAction, session: SessionDep,
         caller: AdminKey, hub: HubDep) -> dict[str, Any]:
    _get(session, incident_id)
    try:
        changed = action(session, incident_id, by=caller.name, note=body.note)
    except actions.IncidentConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    hub.notifier.wake()
    return _detail(session, changed)


@router.post("/{incident_id}/acknowledge", response_model=IncidentDetail,
             response_model_exclude_unset=True, responses=errors(404, 409))
def acknowledge(incident_id: IncidentPath, body: IncidentAction, session: SessionDep,
                caller: AdminKey, hub: HubDep) -> dict[str, Any]:
    """Open → acknowledged, with the caller's key name and an optional note."""
    return _act(actions.acknowledge, incident_id, body, session, caller, hub)


@router.post("/{incident_id}/resolve", response_model=IncidentDetail,
             response_model_exclude_unset=True, responses=errors(404, 409))
def resolve(incident_id: IncidentPath, body: IncidentAction, session: SessionDep,
            caller: AdminKey, hub: HubDep) -> dict[str, Any]:
    """Open or acknowledged → resolved; webhooks that were told of the opening are told."""
    return _act(actions.resolve, incident_id, body, session, caller, hub)
