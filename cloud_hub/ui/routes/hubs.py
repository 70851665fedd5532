"""Hubs: every hub process on the database (running, silent or stopped), the job leases each
holds and its ingest rates, refreshed every few seconds: the deployment at a glance, whichever
process serves the page."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from cloud_hub.api.deps import SessionDep
from cloud_hub.metrics.processes import list_processes
from cloud_hub.ui.render import fragment, page
from cloud_hub.ui.security import UiUser

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/hubs", response_class=HTMLResponse)
def hubs(request: Request, viewer: UiUser, session: SessionDep) -> HTMLResponse:
    return page(request, "hubs.html", viewer, session, section="hubs",
                processes=list_processes(session, now=time.time()))


@router.get("/hubs/rows", response_class=HTMLResponse)
def hub_rows(request: Request, viewer: UiUser, session: SessionDep) -> HTMLResponse:
    """The table again (the page polls it)."""
    return fragment(request, "hubs_body.html", viewer,
                    processes=list_processes(session, now=time.time()))
