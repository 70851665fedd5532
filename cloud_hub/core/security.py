"""API keys: generated with enough entropy that a plain sha256 is a safe way to store them."""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

__all__ = ["Scope", "generate_api_key", "hash_api_key", "scope_allows"]


class Scope(StrEnum):
    READ = "read"
    ADMIN = "admin"


def generate_api_key() -> str:
    return "el_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def scope_allows(granted: Scope | str, needed: Scope | str) -> bool:
    """``admin`` can do everything ``read`` can."""
    return Scope(granted) == Scope.ADMIN or Scope(needed) == Scope.READ
