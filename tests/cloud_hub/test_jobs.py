"""Training jobs over REST with a stand-in run_training (same signature as the pipeline's)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch, encode
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import publish_wait, publisher_client, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url + "/api/v1", timeout=30) as client:
            yield client
    finally:
        server.stop()


def _send_telemetry(hub: Hub, devices: list[str], batches: int = 4, rows: int = 50) -> None:
    client = publisher_client(hub.settings.mqtt_port)
    try:
        for device in devices:
            for seq in range(batches):
                t0 = 1000.0 + seq * rows
                batch = TelemetryBatch(device_id=device, seq=seq, channels=["a", "b", "c"],
                                       ts=[t0 + i for i in range(rows)],
                                       values=[[1.0, 2.0, 3.0]] * rows)
                publish_wait(client, hub.topics.telemetry(device), encode(batch))
    finally:
        client.disconnect()
        client.loop_stop()
    total = len(devices) * batches
    wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == total, what="telemetry")


def _finished(api: httpx.Client, job_id: int) -> dict[str, object] | None:
    job: dict[str, object] = api.get(f"/training-jobs/{job_id}", headers=ADMIN).json()
    return job if job["status"] not in ("queued", "running") else None


def test_training_job_trains_on_stored_telemetry_and_registers_a_draft(
    hub: Hub, api: httpx.Client
) -> None:
    _send_telemetry(hub, ["pump-1", "pump-2"])
    body = {"name": "pump-ae", "channels": ["a", "c"], "since": 1000, "until": 1149,
            "spec": {"window": 8, "epochs": 3}}
    created = api.post("/training-jobs", json=body, headers=ADMIN)
    assert created.status_code == 202, created.text
    job = wait_for(lambda: _finished(api, created.json()["id"]), what="job to finish")
    assert job["status"] == "succeeded", job["error"]
    assert job["model"] == {"name": "pump-ae", "version": 1}
    assert job["progress"] == {"stage": "done", "fraction": 1.0}
    record = api.get("/models/pump-ae/1", headers=ADMIN).json()
    assert record["status"] == "draft"
    assert record["training"]["devices"] == ["pump-1", "pump-2"]
    assert record["training"]["segments"] == [150, 150]
    assert record["training"]["rows"] == 300
    assert record["channels"] == ["a", "c"]


def test_a_job_without_data_fails_and_says_why(hub: Hub, api: httpx.Client) -> None:
    created = api.post("/training-jobs", json={"name": "pump-ae"}, headers=ADMIN).json()
    job = wait_for(lambda: _finished(api, created["id"]), what="job to finish")
    assert job["status"] == "failed"
    assert "no stored telemetry" in str(job["error"])


def test_a_job_for_unknown_devices_fails_naming_them(hub: Hub, api: httpx.Client) -> None:
    created = api.post("/training-jobs", json={"name": "m", "devices": ["ghost"]},
                       headers=ADMIN).json()
    job = wait_for(lambda: _finished(api, created["id"]), what="job to finish")
    assert job["status"] == "failed"
    assert "ghost" in str(job["error"])
