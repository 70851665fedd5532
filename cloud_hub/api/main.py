"""The FastAPI application over a :class:`Hub` (which the caller starts and stops)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from cloud_hub import __version__
from cloud_hub.api.body_limit import BodySizeLimit
from cloud_hub.api.docs import add_docs
from cloud_hub.api.errors import document_errors
from cloud_hub.api.routes import (
    data,
    devices,
    drift,
    enrollment,
    incidents,
    keys,
    models,
    rollouts,
    system,
    training,
    webhooks,
)
from cloud_hub.service import Hub
from cloud_hub.ui import mount_console

__all__ = ["API_PREFIX", "UPLOAD_PATHS", "create_app"]

API_PREFIX = "/api/v1"
# Routes whose body is an upload, with the larger `max_upload_bytes` limit.
UPLOAD_PATHS = (f"{API_PREFIX}/training-jobs/csv",)


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(
        title="edgeloop hub",
        version=__version__,
        description=(
            "Telemetry and anomalies from the fleet, the model registry, training jobs and "
            "staged rollouts. Every call except `/health` and `/signing-key` needs an API key "
            "in `X-API-Key` (or as `Authorization: Bearer KEY`); writes need scope `admin`. "
            "Request bodies above `EDGELOOP_MAX_REQUEST_BYTES` (1 MiB; the CSV upload: "
            "`EDGELOOP_MAX_UPLOAD_BYTES`, 64 MiB) are refused with 413 before anything else."
        ),
        docs_url=None, redoc_url=None,  # /docs from the hub's own files: add_docs
    )
    add_docs(app)
    app.state.hub = hub
    api = APIRouter(prefix=API_PREFIX)
    for module in (system, devices, enrollment, data, models, training, rollouts, incidents,
                   webhooks, keys, drift):
        api.include_router(module.router)
    app.include_router(api)
    mount_console(app)
    document_errors(app)
    settings = hub.settings
    app.add_middleware(BodySizeLimit, default_limit=settings.max_request_bytes,
                       path_limits={p: settings.max_upload_bytes for p in UPLOAD_PATHS})
    return app
