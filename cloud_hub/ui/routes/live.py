"""The event stream of live updates, and the navigation's live counts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlmodel import Session

from cloud_hub.api.deps import HubDep, SessionDep
from cloud_hub.incidents.queries import count_by_state
from cloud_hub.ui.live import decode_token, event_stream, snapshot
from cloud_hub.ui.render import fragment
from cloud_hub.ui.security import UiUser
from shared.topics import DEVICE_ID_PATTERN

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/events")
def events(request: Request, _viewer: UiUser, hub: HubDep,
           t: Annotated[str | None, Query(max_length=2000)] = None,
           device: Annotated[str | None, Query(pattern=rf"^{DEVICE_ID_PATTERN}$")] = None,
           ) -> StreamingResponse:
    """Server-sent events: `event: <topic>` whenever a topic's data changed."""

    def read() -> dict[str, str]:
        with Session(hub.engine) as session:
            return snapshot(session, device)

    stream = event_stream(read, start=decode_token(t), alive=lambda: hub.started_at is not None,
                          disconnected=request.is_disconnected)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/nav-counts", response_class=HTMLResponse)
def nav_counts(request: Request, viewer: UiUser, session: SessionDep) -> HTMLResponse:
    return fragment(request, "nav_counts.html", viewer, counts=count_by_state(session))
