"""API keys: rotating the bootstrap admin key, and key material never reaching the logs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud_hub.core.config import Settings
from cloud_hub.service import Hub
from tests.cloud_hub.api_support import api_client

pytestmark = [pytest.mark.hub]

KEY_A = "alpha-bootstrap-key-0123456789abc"
KEY_B = "bravo-bootstrap-key-0123456789abc"


@contextlib.contextmanager
def _started_api(data_dir: Path, admin_key: str | None) -> Iterator[tuple[Hub, httpx.Client]]:
    """The hub's database and API as `cloud-hub serve` leaves them after start (no MQTT)."""
    hub = Hub(Settings(data_dir=data_dir, admin_api_key=admin_key))
    hub.ensure_admin_key()
    try:
        with api_client(hub) as client:
            yield hub, client
    finally:
        hub.engine.dispose()


def _status(client: httpx.Client, key: str) -> int:
    return client.get("/api/v1/devices", headers={"X-API-Key": key}).status_code


def test_changing_the_bootstrap_admin_key_revokes_the_old_one(tmp_path: Path) -> None:
    with _started_api(tmp_path, KEY_A) as (_, client):
        assert _status(client, KEY_A) == 200
    # The operator changes EDGELOOP_ADMIN_API_KEY and restarts the hub.
    with _started_api(tmp_path, KEY_B) as (_, client):
        assert _status(client, KEY_A) == 401
        assert _status(client, KEY_B) == 200
        keys = client.get("/api/v1/api-keys", headers={"X-API-Key": KEY_B}).json()
        by_prefix = {k["prefix"]: k for k in keys}
        assert by_prefix[KEY_A[:8]]["revoked_at"] is not None
        assert by_prefix[KEY_B[:8]]["revoked_at"] is None
    # And back again: a revoked key is not brought back to life, and B is replaced.
    with _started_api(tmp_path, KEY_A) as (_, client):
        assert _status(client, KEY_A) == 401
        assert _status(client, KEY_B) == 401


def test_a_configured_key_replaces_a_generated_bootstrap_key(tmp_path: Path) -> None:
    with _started_api(tmp_path, None) as (hub, client):
        generated = hub.generated_admin_key
        assert generated is not None
        assert _status(client, generated) == 200
    with _started_api(tmp_path, KEY_A) as (_, client):
        assert _status(client, generated) == 401
        assert _status(client, KEY_A) == 200


def test_admin_created_keys_survive_a_bootstrap_key_change(tmp_path: Path) -> None:
    with _started_api(tmp_path, KEY_A) as (_, client):
        made = client.post("/api/v1/api-keys", json={"name": "ci", "scope": "admin"},
                           headers={"X-API-Key": KEY_A}).json()["key"]
    with _started_api(tmp_path, KEY_B) as (_, client):
        assert _status(client, made) == 200


def test_generated_and_created_keys_never_reach_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with _started_api(tmp_path, None) as (hub, client):
        generated = hub.generated_admin_key
        assert generated is not None
        secrets = [generated]
        for scope in ("read", "admin"):
            created = client.post("/api/v1/api-keys", json={"name": f"k-{scope}",
                                                            "scope": scope},
                                  headers={"X-API-Key": generated})
            assert created.status_code == 201
            secrets.append(created.json()["key"])
        assert client.delete("/api/v1/api-keys/2",
                             headers={"X-API-Key": generated}).status_code == 200
    with _started_api(tmp_path, KEY_A):  # revokes the generated key, and logs that
        pass
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "revoked" in logged  # the rotation was logged ...
    for secret in [*secrets, KEY_A]:
        assert secret.removeprefix("el_")[:12] not in logged  # ... without any part of a key


def test_hubs_starting_together_store_the_configured_key_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hubs on one database: the other hub stores the configured key between this hub's
    check and its insert. The unique key hash refuses the second row (a real IntegrityError
    from the database); this hub checks again and starts, with one row for the key."""
    from sqlmodel import Session, select

    from cloud_hub.core.security import Scope, hash_api_key
    from cloud_hub.db.tables import ApiKey

    first = Hub(Settings(data_dir=tmp_path, admin_api_key=KEY_A))
    second = Hub(Settings(data_dir=tmp_path, admin_api_key=KEY_A))
    original = second._ensure_admin_key_once
    calls: list[str] = []

    def raced() -> str | None:
        calls.append("once")
        if len(calls) == 1:
            first.ensure_admin_key()   # the other hub wins the race ...
            with Session(second.engine) as session:   # ... and this hub's insert follows
                session.add(ApiKey(name="bootstrap", key_hash=hash_api_key(KEY_A),
                                   prefix=KEY_A[:8], scope=Scope.ADMIN, created_at=0.0))
                session.commit()
        return original()

    monkeypatch.setattr(second, "_ensure_admin_key_once", raced)
    try:
        assert second.ensure_admin_key() is None
        assert calls == ["once", "once"]
        with Session(second.engine) as session:
            rows = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(KEY_A))).all()
        assert len(rows) == 1 and rows[0].revoked_at is None
    finally:
        first.engine.dispose()
        second.engine.dispose()
