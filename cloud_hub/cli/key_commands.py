"""Key commands: ``keys`` lists, rotates and retires the hub's signing keys, ``api-keys``
lists, creates and revokes API keys; each takes parsed arguments and a :class:`HubClient`."""

from __future__ import annotations

import argparse
from typing import Any

from cloud_hub.cli.client import HubClient
from cloud_hub.cli.render import emit

__all__ = ["KEY_COMMANDS", "add_key_parsers"]


def add_key_parsers(sub: Any) -> None:
    sk = sub.add_parser("keys", help="signing keys: list, rotate to a new key, retire an old one; "
                                     "fingerprint: read on this machine, for checking devices")
    sk.add_argument("action", choices=["list", "rotate", "retire", "fingerprint"])
    sk.add_argument("key_id", nargs="?", help="retire: the key id")
    sk.add_argument("--overlap", type=float, default=7 * 86400.0, metavar="SECONDS",
                    help="rotate: how long the old key stays trusted (default 7 days)")
    sk.add_argument("--force", action="store_true",
                    help="retire: even during the overlap (a compromised key)")

    k = sub.add_parser("api-keys", help="create, list and revoke API keys")
    k.add_argument("action", choices=["list", "create", "revoke"])
    k.add_argument("--name")
    k.add_argument("--scope", choices=["read", "admin"], default="read")
    k.add_argument("--id", type=int)


def keys(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "rotate":
        data = c.post("/keys/rotate", {"overlap_s": a.overlap})
    elif a.action == "retire":
        data = c.post(f"/keys/{a.key_id}/retire", {"force": a.force})
    else:
        data = c.get("/keys")
    if a.json:
        emit(data, True)
        return 0
    emit(data["keys"], False, ("key_id", "status", "created_at", "retire_after", "retired_at",
                               "private_key_here"), f"signing keys (active {data['active']})")
    emit(data["trust_lists"], False, ("version", "reason", "keys", "signed_by", "published_at"),
         f"trust lists (latest v{data['trust_version']})")
    if data.get("resigned"):
        emit([{"model": r} for r in data["resigned"]], False, ("model",), "signed again")
    return 0


def api_keys(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "list":
        emit(c.get_all("/api-keys"), a.json, ("id", "name", "prefix", "scope", "revoked_at"))
    elif a.action == "create":
        emit(c.post("/api-keys", {"name": a.name, "scope": a.scope}), a.json)
    elif a.action == "revoke":
        emit(c.delete(f"/api-keys/{a.id}"), a.json)
    return 0


KEY_COMMANDS = {"keys": keys, "api-keys": api_keys}
