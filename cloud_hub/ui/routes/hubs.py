"""Hubs: every hub process on the database (running, silent or stopped), the job leases each
holds and its ingest rates, the broker's figures as the hubs relay them, and the last audit of
the broker's device credentials against the registry (and the revocations the broker has not
confirmed yet), refreshed every few seconds: the
deployment at a glance, whichever process serves the page."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from cloud_hub.api.deps import SessionDep
from cloud_hub.metrics.processes import (
    latest_broker_figures,
    latest_credential_audit,
    list_processes,
    unconfirmed_revocations,
)
from cloud_hub.ui.render import fragment, page
from cloud_hub.ui.security import UiUser

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/hubs", response_class=HTMLResponse)
def hubs(request: Request, viewer: UiUser, session: SessionDep) -> HTMLResponse:
    return page(request, "hubs.html", viewer, session, section="hubs", **_hubs(session))


@router.get("/hubs/rows", response_class=HTMLResponse)
def hub_rows(request: Request, viewer: UiUser, session: SessionDep) -> HTMLResponse:
    """The table again (the page polls it)."""
    return fragment(request, "hubs_body.html", viewer, **_hubs(session))


def _hubs(session: SessionDep) -> dict[str, Any]:
    processes = list_processes(session, now=time.time())
    return {"processes": processes, "broker": latest_broker_figures(processes),
            "audit": latest_credential_audit(processes),
            "unconfirmed": unconfirmed_revocations(processes)}
