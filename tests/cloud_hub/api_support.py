"""Serving a hub's REST API for tests: uvicorn on a free port, with keys of every kind; and the
world the auth tables call every route in (test_api_auth.py, test_api_postgres.py): a started
hub with one of everything the routes act on."""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlmodel import Session

from cloud_hub.api.main import create_app
from cloud_hub.core.config import Settings
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.service import Hub
from shared.messages import AnomalyEvent, ModelRef, TelemetryBatch
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY, hub_settings
from tests.cloud_hub.helpers import enroll_devices, stand_in_training, tiny_artifact, wait_for

EPOCH = "0123456789abcdef"  # one stream epoch per device here


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


@dataclass
class World:
    """A started hub with one of everything the routes act on."""

    hub: Hub
    http: httpx.Client
    keys: Keys
    model: tuple[str, int]
    counter: list[int] = field(default_factory=lambda: [0])

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"/api/v1{path}",
                                     headers={"X-API-Key": self.keys.admin}, **kwargs)
        assert response.status_code < 300, (method, path, response.text)
        return response.json() if response.content else None

    def fresh(self, prefix: str) -> str:
        self.counter[0] += 1
        return f"{prefix}-{self.counter[0]}"

    def known_device(self) -> str:
        device = self.fresh("auth-dev")
        enroll_devices(self.hub, (device,))  # only enrolled devices send data or take rollouts
        with Session(self.hub.engine) as session:
            store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
                device_id=device, epoch=EPOCH, seq=0, channels=["a", "b"], ts=[1.0, 2.0],
                values=[[1.0, 2.0], [3.0, 4.0]])]))
        return device

    def registered_model(self) -> int:
        return self.hub.register(tiny_artifact(), name=self.model[0])[1]

    def rollout(self, *, then: str | None = None) -> int:
        body = {"model": {"name": self.model[0], "version": self.model[1]},
                "target": {"devices": [self.known_device()]},
                "policy": {"min_observation_s": 3600, "stage_timeout_s": 3600}}
        rollout_id = int(self.admin("POST", "/rollouts", json=body)["id"])
        if then:
            self.admin("POST", f"/rollouts/{rollout_id}/{then}")
        return rollout_id

    def incident(self) -> int:
        device = self.known_device()
        event = AnomalyEvent(device_id=device, epoch=EPOCH, seq=0, ts=(1.0, 2.0), score=3.0,
                             threshold=1.0, channels=["a"], detected_at=2.0,
                             model=ModelRef(name=self.model[0], version=self.model[1]))
        with Session(self.hub.engine) as session:
            store_batch(session, IngestBatch(anomalies=[event]))
        self.hub.incidents.wake()
        found = wait_for(lambda: self.admin("GET", "/incidents", params={"device_id": device}),
                         timeout=20, what=f"an incident of {device}")
        return int(found[0]["id"])


def _run_training(readings: Any, channels: list[str], spec: Any, **kwargs: Any) -> Any:
    if channels and channels[0] == "slow":  # the job the cancel test cancels
        cancel = kwargs["cancel"]
        cancel.wait(60)
        raise RuntimeError("cancelled")
    return stand_in_training()(readings, channels, spec, **kwargs)


@contextlib.contextmanager
def started_world(data_dir: Path, **settings: object) -> Iterator[World]:
    """A hub serving its API on a broker of its own, with keys of every kind, a device that
    sent telemetry, a published model, a training job and a rollout (``settings`` over the
    test hub's, e.g. a PostgreSQL ``database_url``)."""
    broker = Broker()
    broker.start()
    hub = Hub(hub_settings(broker, data_dir, incident_tick_s=0.1, **settings),
              run_training=_run_training)
    hub.start()
    try:
        with serving(create_app(hub)) as url, httpx.Client(base_url=url, timeout=30) as http:
            keys = make_keys(http, ADMIN_KEY)
            w = World(hub=hub, http=http, keys=keys, model=("auth-ae", 0))
            w.known_device()  # auth-dev-1, whose telemetry the read call asks for
            version = w.registered_model()
            w.model = ("auth-ae", version)
            w.admin("POST", f"/models/auth-ae/{version}/publish")
            w.admin("POST", "/training-jobs", json={"name": "auth-m", "channels": ["nope"]})
            w.rollout()  # rollout 1
            yield w
    finally:
        hub.stop()
        broker.close()
