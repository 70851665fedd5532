"""Serving a hub's REST API for tests: uvicorn on a free port, with keys of every kind."""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from cloud_hub.api.main import create_app
from cloud_hub.core.config import Settings
from cloud_hub.service import Hub


@contextlib.contextmanager
def serving(app: FastAPI, timeout: float = 10.0) -> Iterator[str]:
    """Run ``app`` in a real uvicorn on a free loopback port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-http", daemon=True)
    thread.start()
    waited = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if server.started or not thread.is_alive():
            break
        waited.wait(0.01)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"uvicorn did not start within {timeout}s")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def openapi_of_a_fresh_hub() -> dict[str, Any]:
    """The hub application's OpenAPI document, without starting anything (for collection)."""
    with tempfile.TemporaryDirectory() as folder:
        hub = Hub(Settings(data_dir=Path(folder)))
        try:
            return create_app(hub).openapi()
        finally:
            hub.engine.dispose()


@contextlib.contextmanager
def api_client(hub: Hub) -> Iterator[httpx.Client]:
    """An httpx client of ``hub``'s API (the hub itself need not be started)."""
    with serving(create_app(hub)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@dataclass(frozen=True)
class Keys:
    """One key of each kind the auth tests need."""

    admin: str
    read: str
    revoked: str


def make_keys(client: httpx.Client, admin_key: str) -> Keys:
    admin = {"X-API-Key": admin_key}

    def create(name: str, scope: str) -> dict[str, object]:
        response = client.post("/api/v1/api-keys", json={"name": name, "scope": scope},
                               headers=admin)
        assert response.status_code == 201, response.text
        data: dict[str, object] = response.json()
        return data

    read = create("viewer", "read")
    revoked = create("revoked-admin", "admin")
    response = client.delete(f"/api/v1/api-keys/{revoked['id']}", headers=admin)
    assert response.status_code == 200, response.text
    return Keys(admin=admin_key, read=str(read["key"]), revoked=str(revoked["key"]))
