"""Health, signing key, ingest metrics, the hub processes and API keys."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy import text
from sqlmodel import col, select

from cloud_hub.api.deps import AdminKey, HubDep, IdPath, ReadKey, SessionDep
from cloud_hub.api.errors import errors
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    HealthPublic,
    HubProcessPublic,
    MetricsPublic,
    SigningKeyPublic,
)
from cloud_hub.core.security import Scope, generate_api_key, hash_api_key
from cloud_hub.db.ops_tables import HubProcessRecord
from cloud_hub.db.paging import keyset_page
from cloud_hub.db.tables import ApiKey
from cloud_hub.metrics.exposition import CONTENT_TYPE
from cloud_hub.metrics.processes import process_views

router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthPublic)
def health(hub: HubDep, session: SessionDep) -> dict[str, object]:
    try:
        session.connection().execute(text("SELECT 1")).one()
        database = "ok"
    except Exception as exc:  # reported, not raised: health must answer
        database = f"error: {type(exc).__name__}"
    # A hub whose broker is down still serves its API and reconnects in the background.
    connected = hub.ingest.connected
    return {"status": "ok" if connected else "degraded", "mqtt_connected": connected,
            "database": database}


@router.get("/signing-key", response_model=SigningKeyPublic)
def signing_key(hub: HubDep) -> dict[str, str]:
    return {"key_id": hub.signing_key.key_id, "public_key": hub.signing_key.public_b64()}


@router.get("/metrics", response_model=MetricsPublic, responses={200: {"content": {
    "text/plain": {"schema": {"type": "string"},
                   "example": "# TYPE edgeloop_hub_telemetry_readings_stored_total counter\n"
                              "edgeloop_hub_telemetry_readings_stored_total 1200\n"}}}})
def metrics(hub: HubDep, _key: ReadKey,
            output: Annotated[Literal["json", "prometheus"], Query(
                alias="format",
                description="`prometheus`: the text format Prometheus scrapes (version 0.0.4)",
            )] = "json") -> Any:
    """This hub process's counters: each process keeps its own, so behind a load balancer ask
    each one at its own address (docs/scaling.md, "Watching the hubs")."""
    if output == "prometheus":
        return Response(hub.metrics_text(), media_type=CONTENT_TYPE)
    return hub.metrics()


MAX_HUB_PROCESSES = 1000


@router.get("/hubs", response_model=list[HubProcessPublic], responses=PAGE_HEADERS)
def hubs(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=MAX_HUB_PROCESSES)] = 100,
    cursor: CursorQuery = None,
) -> list[HubProcessPublic]:
    """Every hub process on this database that reported within the last day, by start time,
    with its state and the job leases it holds: the whole deployment, whichever process
    answers."""
    order = [col(HubProcessRecord.started_at), col(HubProcessRecord.holder)]
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, select(HubProcessRecord), order=order, limit=limit, after=after))
    return [HubProcessPublic(**v.record.model_dump(), state=v.state, leases=v.leases)
            for v in process_views(session, rows, now=time.time())]


def _public(k: ApiKey) -> ApiKeyPublic:
    assert k.id is not None
    return ApiKeyPublic(id=k.id, name=k.name, prefix=k.prefix, scope=k.scope,
                        created_at=k.created_at, revoked_at=k.revoked_at)


MAX_API_KEYS = 1000


@router.get("/api-keys", response_model=list[ApiKeyPublic], responses=PAGE_HEADERS)
def list_api_keys(
    request: Request, response: Response, session: SessionDep, _key: AdminKey,
    limit: Annotated[int, Query(ge=1, le=MAX_API_KEYS)] = 100,
    cursor: CursorQuery = None,
) -> list[ApiKeyPublic]:
    """Keys by id (never the secret: only its first characters, ``prefix``)."""
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, select(ApiKey), order=[col(ApiKey.id)], limit=limit, after=after))
    return [_public(k) for k in rows]


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_api_key(body: ApiKeyCreate, session: SessionDep, _key: AdminKey) -> ApiKeyCreated:
    secret = generate_api_key()
    record = ApiKey(name=body.name, key_hash=hash_api_key(secret), prefix=secret[:8],
                    scope=Scope(body.scope), created_at=time.time())
    session.add(record)
    session.commit()
    session.refresh(record)
    return ApiKeyCreated(**_public(record).model_dump(), key=secret)


@router.delete("/api-keys/{key_id}", response_model=ApiKeyPublic, responses=errors(404, 409))
def revoke_api_key(key_id: IdPath, session: SessionDep, caller: AdminKey) -> ApiKeyPublic:
    record = session.get(ApiKey, key_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"API key id {key_id} does not exist")
    if record.id == caller.id:
        raise HTTPException(status.HTTP_409_CONFLICT, "an API key cannot revoke itself")
    if record.revoked_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, (
            f"API key id {key_id} ({record.name!r}) is already revoked (at {record.revoked_at})"))
    record.revoked_at = time.time()
    session.add(record)
    session.commit()
    session.refresh(record)
    return _public(record)
