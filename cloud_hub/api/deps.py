"""Dependencies that routes declare: the hub, a database session, the caller's API key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session, select

from cloud_hub.core.security import Scope, hash_api_key, scope_allows
from cloud_hub.db.tables import ApiKey
from cloud_hub.service import Hub

__all__ = ["MAX_ID", "AdminKey", "HubDep", "IdPath", "IdQuery", "ReadKey", "SessionDep"]

# Row ids and model versions are INTEGER columns (32 bits on PostgreSQL): a larger number in a
# request is refused as invalid (422) before it reaches the database (where it was a 500).
MAX_ID = 2**31 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="an API key with scope `read` or `admin`")
# The same key as a bearer token: what a Prometheus scrape job (`authorization`) and most HTTP
# tools send without a custom header.
_bearer = HTTPBearer(auto_error=False, description="an API key, as `Authorization: Bearer KEY`")


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


def get_db(hub: HubDep) -> Iterator[Session]:
    with Session(hub.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def _caller(session: Session, key: str | None, bearer: HTTPAuthorizationCredentials | None,
            needed: Scope) -> ApiKey:
    if not key and bearer is not None:
        key = bearer.credentials
    if not key:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key (header X-API-Key, "
                            "or Authorization: Bearer KEY)")
    record = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key))).first()
    if record is None or record.revoked_at is not None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key")
    if not scope_allows(record.scope, needed):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"API key {record.name!r} has scope {record.scope!r}; this call needs {needed.value!r}",
        )
    return record


_KeyHeader = Annotated[str | None, Security(_api_key_header)]
_BearerHeader = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def require_read(session: SessionDep, key: _KeyHeader, bearer: _BearerHeader) -> ApiKey:
    return _caller(session, key, bearer, Scope.READ)


def require_admin(session: SessionDep, key: _KeyHeader, bearer: _BearerHeader) -> ApiKey:
    return _caller(session, key, bearer, Scope.ADMIN)


ReadKey = Annotated[ApiKey, Depends(require_read)]
AdminKey = Annotated[ApiKey, Depends(require_admin)]
