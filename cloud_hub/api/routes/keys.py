"""Signing keys: list them, rotate to a new one, retire an old one (each a signed trust list)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.deps import AdminKey, HubDep, ReadKey, SessionDep
from cloud_hub.api.errors import ErrorBody, errors
from cloud_hub.keys.ring import KeyConflict, KeyUnavailable
from cloud_hub.mqtt.publisher import PublishError

router = APIRouter(prefix="/keys", tags=["keys"])
KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
_DAY = 86400.0


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"overlap_s": 7 * _DAY}]})
    overlap_s: float = Field(default=7 * _DAY, ge=0, le=365 * _DAY,
                             description="how long the old key stays trusted before `retire`")


class KeyRetire(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"force": False}]})
    force: bool = Field(default=False, description="retire during the overlap (compromised key)")


class SigningKeyPublic(BaseModel):
    key_id: str
    public_key: str
    status: str
    created_at: float
    activated_at: float | None
    retire_after: float | None
    retired_at: float | None
    private_key_here: bool


class TrustListPublic(BaseModel):
    version: int
    created_at: float
    reason: str
    published_at: float | None
    keys: list[str]
    signed_by: list[str]


class KeysPublic(BaseModel):
    active: str | None
    trust_version: int
    keys: list[SigningKeyPublic]
    trust_lists: list[TrustListPublic]
    resigned: list[str] = Field(default_factory=list,
                                description="after a retire: versions signed again (name:v)")


@router.get("", response_model=KeysPublic)
def keys(session: SessionDep, hub: HubDep, _key: ReadKey) -> dict[str, Any]:
    """Every signing key (active, trusted, retired) and every published trust list."""
    return hub.keys.view(session)


@router.post("/rotate", response_model=KeysPublic, responses=errors(409, 503))
def rotate(body: KeyRotate, session: SessionDep, hub: HubDep, _key: AdminKey) -> dict[str, Any]:
    """A new signing key for new releases; the old one stays trusted for ``overlap_s``."""
    try:
        hub.keys.rotate(session, overlap_s=body.overlap_s, publisher=hub.publisher)
    except (KeyConflict, KeyUnavailable) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except PublishError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"rotated, but the trust list is not on the broker yet: {exc}"
                            ) from None
    return hub.keys.view(session)


@router.post("/{key_id}/retire", response_model=KeysPublic,
             responses={**errors(404, 503), 409: {
                 "model": ErrorBody, "description": "the active key, or still in its overlap"}})
def retire(key_id: KeyIdPath, body: KeyRetire, session: SessionDep, hub: HubDep,
           _key: AdminKey) -> dict[str, Any]:
    """Stop trusting a key: a trust list without it; published models it signed are signed
    again by the active key (same release numbers)."""
    try:
        hub.keys.retire(session, key_id, force=body.force, publisher=hub.publisher)
        resigned = hub.releases.resign_published(session, key_id)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except (KeyConflict, KeyUnavailable) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except PublishError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"retired, but not everything is on the broker yet: {exc}") from None
    return {**hub.keys.view(session), "resigned": [f"{n}:{v}" for n, v in resigned]}
