"""Tables of the hub's signing keys and of the signed trust lists it published."""

from __future__ import annotations

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from cloud_hub.core.states import KeyStatus
from cloud_hub.db.types import enum_field

__all__ = ["SigningKeyRecord", "TrustListRecord"]


class SigningKeyRecord(SQLModel, table=True):
    """One Ed25519 key of the hub (the private half is a 0600 file in its data dir)."""

    __tablename__ = "signing_keys"

    key_id: str = Field(primary_key=True, max_length=16)
    public_key: str  # base64 of the 32 raw bytes
    status: KeyStatus = enum_field(KeyStatus, KeyStatus.TRUSTED)
    created_at: float
    activated_at: float | None = None
    retire_after: float | None = None  # end of the overlap once a newer key took over
    retired_at: float | None = None


class TrustListRecord(SQLModel, table=True):
    """A signed trust list exactly as published on ``Topics.trust(version)`` (retained)."""

    __tablename__ = "trust_lists"

    version: int = Field(primary_key=True)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float
    reason: str
    published_at: float | None = None
