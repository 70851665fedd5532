"""The FastAPI application over a :class:`Hub` (which the caller starts and stops)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from cloud_hub import __version__
from cloud_hub.api.routes import data, devices, models, rollouts, system, training
from cloud_hub.service import Hub

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api/v1"


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(
        title="edgeloop hub",
        version=__version__,
        description=(
            "Telemetry and anomalies from the fleet, the model registry, training jobs and "
            "staged rollouts. Every call except `/health` and `/signing-key` needs an API key "
            "in `X-API-Key`; writes need scope `admin`."
        ),
    )
    app.state.hub = hub
    api = APIRouter(prefix=API_PREFIX)
    for module in (system, devices, data, models, training, rollouts):
        api.include_router(module.router)
    app.include_router(api)
    return app
