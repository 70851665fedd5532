"""REST API: authentication, scopes, validation errors, devices, telemetry and anomalies."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch, encode
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import publish_wait, publisher_client, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            yield client
    finally:
        server.stop()


def _read_key(api: httpx.Client) -> dict[str, str]:
    created = api.post("/api/v1/api-keys", json={"name": "viewer", "scope": "read"},
                       headers=ADMIN)
    assert created.status_code == 201, created.text
    return {"X-API-Key": created.json()["key"]}


def test_health_and_signing_key_need_no_key(api: httpx.Client, hub: Hub) -> None:
    health = api.get("/api/v1/health").json()
    assert health == {"status": "ok", "mqtt_connected": True, "database": "ok"}
    key = api.get("/api/v1/signing-key").json()
    assert key == {"key_id": hub.signing_key.key_id, "public_key": hub.signing_key.public_b64()}


def test_missing_or_unknown_key_is_401(api: httpx.Client) -> None:
    assert api.get("/api/v1/devices").status_code == 401
    response = api.get("/api/v1/devices", headers={"X-API-Key": "not-a-key"})
    assert response.status_code == 401
    assert "unknown" in response.json()["detail"]


def test_read_scope_cannot_write(api: httpx.Client) -> None:
    viewer = _read_key(api)
    assert api.get("/api/v1/devices", headers=viewer).status_code == 200
    response = api.post("/api/v1/training-jobs", json={"name": "m"}, headers=viewer)
    assert response.status_code == 403
    assert "needs 'admin'" in response.json()["detail"]
    response = api.put("/api/v1/devices/pump-1/desired", json={"model": None}, headers=viewer)
    assert response.status_code == 403


def test_revoked_key_is_refused(api: httpx.Client) -> None:
    created = api.post("/api/v1/api-keys", json={"name": "temp", "scope": "admin"},
                       headers=ADMIN).json()
    key = {"X-API-Key": created["key"]}
    assert api.get("/api/v1/models", headers=key).status_code == 200
    revoked = api.delete(f"/api/v1/api-keys/{created['id']}", headers=ADMIN)
    assert revoked.json()["revoked_at"] is not None
    assert api.get("/api/v1/models", headers=key).status_code == 401
    listed = api.get("/api/v1/api-keys", headers=ADMIN).json()
    assert all("key" not in k and "key_hash" not in k for k in listed)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name!"}, "name"),
        ({"name": "m", "devices": []}, "devices"),
        ({"name": "m", "spec": {"epochz": 3}}, "spec"),
        ({"name": "m", "since": -1}, "since"),
        ({"name": "m", "surprise": 1}, "surprise"),
    ],
)
def test_invalid_training_body_is_422_naming_the_field(
    api: httpx.Client, body: dict[str, object], field: str
) -> None:
    response = api.post("/api/v1/training-jobs", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    locations = [err["loc"] for err in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations


def test_invalid_desired_body_is_422(api: httpx.Client) -> None:
    response = api.put("/api/v1/devices/pump-1/desired",
                       json={"model": {"name": "m", "version": 0}}, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "model", "version"]
    response = api.put("/api/v1/devices/bad$id/desired", json={"model": None}, headers=ADMIN)
    assert response.status_code == 422


def test_devices_telemetry_and_summary_after_ingest(
    broker: Broker, api: httpx.Client, hub: Hub
) -> None:
    client = publisher_client(broker)
    try:
        for seq in (0, 1, 3):  # batch 2 never arrives
            batch = TelemetryBatch(device_id="pump-9", epoch="0123456789abcdef", seq=seq,
                                   channels=["a", "b"],
                                   ts=[100.0 + seq * 2, 101.0 + seq * 2],
                                   values=[[1.0, 2.0], [3.0, 4.0]])
            publish_wait(client, hub.topics.telemetry("pump-9"), encode(batch))
    finally:
        client.disconnect()
        client.loop_stop()
    wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == 3, what="3 batches")

    devices = api.get("/api/v1/devices", headers=ADMIN).json()
    assert [d["device_id"] for d in devices] == ["pump-9"]
    assert devices[0]["telemetry_readings"] == 6
    data = api.get("/api/v1/telemetry", params={"device_id": "pump-9", "since": 102},
                   headers=ADMIN).json()
    assert data["channels"] == ["a", "b"]
    assert data["ts"] == [102.0, 103.0, 106.0, 107.0]
    summary = api.get("/api/v1/telemetry/summary", headers=ADMIN).json()
    assert summary == [{"device_id": "pump-9", "readings": 6, "batches": 3,
                        "first_ts": 100.0, "last_ts": 107.0, "seq_first": 0, "seq_last": 3,
                        "missing_batches": 1, "epochs": 1}]
    metrics = api.get("/api/v1/metrics", headers=ADMIN).json()
    assert metrics["telemetry_readings"] == 6
    tagged = api.patch("/api/v1/devices/pump-9", json={"group": "plant-a", "tags": ["x", "y"]},
                       headers=ADMIN).json()
    assert tagged["group"] == "plant-a" and tagged["tags"] == ["x", "y"]
    assert [d["device_id"] for d in api.get("/api/v1/devices", params={"tag": "x"},
                                            headers=ADMIN).json()] == ["pump-9"]


def test_openapi_lists_every_resource(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/devices", "/api/v1/telemetry", "/api/v1/anomalies", "/api/v1/models",
                 "/api/v1/training-jobs", "/api/v1/rollouts", "/api/v1/health",
                 "/api/v1/metrics", "/api/v1/hubs", "/api/v1/dead-letters",
                 "/api/v1/api-keys"):
        assert path in paths, path
