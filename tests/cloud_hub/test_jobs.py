"""Training jobs over REST with a stand-in run_training (same signature as the pipeline's)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.jobs.request import TrainingRequest
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch, encode
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY, hub_settings
from tests.cloud_hub.helpers import (
    enroll_devices,
    publish_wait,
    publisher_client,
    stand_in_training,
    training_until_cancelled,
    wait_for,
)

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


def _send_telemetry(
    broker: Broker, hub: Hub, devices: list[str], batches: int = 4, rows: int = 50
) -> None:
    client = publisher_client(broker)
    try:
        for device in devices:
            for seq in range(batches):
                t0 = 1000.0 + seq * rows
                batch = TelemetryBatch(device_id=device, epoch="0123456789abcdef", seq=seq,
                                       channels=["a", "b", "c"],
                                       ts=[t0 + i for i in range(rows)],
                                       values=[[1.0, 2.0, 3.0]] * rows)
                publish_wait(client, hub.topics.telemetry(device), encode(batch))
    finally:
        client.disconnect()
        client.loop_stop()
    total = len(devices) * batches
    wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == total, what="telemetry")


JOB_TIMEOUT_S = 120.0  # the first stand-in job converts a tiny model: TensorFlow loads then


def _finished(api: httpx.Client, job_id: int) -> dict[str, object] | None:
    job: dict[str, object] = api.get(f"/training-jobs/{job_id}", headers=ADMIN).json()
    return job if job["status"] not in ("queued", "running") else None


def test_training_job_trains_on_stored_telemetry_and_registers_a_draft(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    _send_telemetry(broker, hub, ["pump-1", "pump-2"])
    body = {"name": "pump-ae", "channels": ["a", "c"], "since": 1000, "until": 1149,
            "spec": {"window": 8, "epochs": 3}}
    created = api.post("/training-jobs", json=body, headers=ADMIN)
    assert created.status_code == 202, created.text
    job = wait_for(lambda: _finished(api, created.json()["id"]), JOB_TIMEOUT_S, "job to finish")
    assert job["status"] == "succeeded", job["error"]
    assert job["model"] == {"name": "pump-ae", "version": 1}
    progress = job["progress"]
    assert (progress["stage"], progress["fraction"]) == ("done", 1.0)
    assert (progress["epoch"], progress["epochs"], progress["loss"]) == (3, 3, 1 / 3)
    record = api.get("/models/pump-ae/1", headers=ADMIN).json()
    assert record["status"] == "draft"
    assert record["training"]["devices"] == ["pump-1", "pump-2"]
    assert record["training"]["segments"] == [150, 150]
    assert record["training"]["rows"] == 300
    assert record["channels"] == ["a", "c"]


def test_a_job_selecting_no_readings_is_refused_up_front(hub: Hub, api: httpx.Client) -> None:
    refused = api.post("/training-jobs", json={"name": "pump-ae"}, headers=ADMIN)
    assert refused.status_code == 422, refused.text  # it was queued, then failed
    error = refused.json()["detail"][0]
    assert error["loc"] == ["body", "devices"] and "select no stored readings" in error["msg"]
    assert api.get("/training-jobs", headers=ADMIN).json() == []
    # A job whose readings are gone by the time it runs (retention) fails, saying why.
    with Session(hub.engine) as session:
        queued = hub.jobs.submit(session, name="pump-ae",
                                 request=TrainingRequest(name="pump-ae"))
    job = wait_for(lambda: _finished(api, queued.id), JOB_TIMEOUT_S, "job to finish")
    assert job["status"] == "failed"
    assert "no stored telemetry" in str(job["error"])


def test_a_job_for_unknown_devices_is_refused_naming_them(hub: Hub, api: httpx.Client) -> None:
    refused = api.post("/training-jobs", json={"name": "m", "devices": ["ghost"]},
                       headers=ADMIN)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "devices", 0]
    assert "'ghost' is not enrolled" in refused.json()["detail"][0]["msg"]
    assert api.get("/training-jobs", headers=ADMIN).json() == []


def test_a_job_trains_on_an_uploaded_csv(hub: Hub, api: httpx.Client) -> None:
    lines = ["ts,a,b,c"] + [f"{1000 + i},{i % 7},{i % 5},{i % 3}" for i in range(200)]
    created = api.post("/training-jobs/csv", params={"name": "csv-ae", "channels": "a,c",
                                                      "spec": '{"window": 8, "epochs": 2}'},
                       content="\n".join(lines).encode(), headers={**ADMIN,
                                                                   "Content-Type": "text/csv"})
    assert created.status_code == 202, created.text
    job = wait_for(lambda: _finished(api, created.json()["id"]), JOB_TIMEOUT_S, "job to finish")
    assert job["status"] == "succeeded", job["error"]
    record = api.get("/models/csv-ae/1", headers=ADMIN).json()
    assert record["channels"] == ["a", "c"]
    assert record["training"]["rows"] == 200
    assert record["training"]["source"] == "uploaded CSV"


def test_a_bad_csv_is_422_naming_line_and_column(hub: Hub, api: httpx.Client) -> None:
    text = "ts,a,b\n1,2,3\n2,x,4\n"
    response = api.post("/training-jobs/csv", params={"name": "csv-ae"}, content=text.encode(),
                        headers={**ADMIN, "Content-Type": "text/csv"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "line 3, column 'a': 'x' is not a number"


def test_a_running_job_can_be_cancelled(broker: Broker, tmp_path: Path) -> None:
    started = threading.Event()
    hub = Hub(hub_settings(broker, tmp_path / "hub"),
              run_training=training_until_cancelled(started))
    enroll_devices(hub)
    hub.start()
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url + "/api/v1", timeout=30) as api:
            _send_telemetry(broker, hub, ["pump-1"], batches=1)
            job = api.post("/training-jobs", json={"name": "m"}, headers=ADMIN).json()
            assert started.wait(10)
            assert api.post(f"/training-jobs/{job['id']}/cancel",
                            headers=ADMIN).status_code == 200
            done = wait_for(lambda: _finished(api, job["id"]), what="the cancelled job")
            assert done["status"] == "cancelled"
            again = api.post(f"/training-jobs/{job['id']}/cancel", headers=ADMIN)
            assert again.status_code == 409
    finally:
        server.stop()


def test_a_job_whose_model_fails_the_parity_gate_ends_failed_with_the_reason(
    broker: Broker, tmp_path: Path
) -> None:
    hub = Hub(hub_settings(broker, tmp_path / "hub"),
              run_training=stand_in_training(agreement=0.95))
    enroll_devices(hub)
    hub.start()
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url + "/api/v1", timeout=30) as api:
            _send_telemetry(broker, hub, ["pump-1"])
            created = api.post("/training-jobs", json={"name": "pump-ae",
                                                       "spec": {"window": 8, "epochs": 2}},
                               headers=ADMIN)
            job_id = created.json()["id"]
            job = wait_for(lambda: _finished(api, job_id), JOB_TIMEOUT_S, "job to finish")
            assert job["status"] == "failed"
            assert "cannot be published" in str(job["error"])
            assert "decision_agreement 0.9500" in str(job["error"])
            assert job["model"] == {"name": "pump-ae", "version": 1}
            record = api.get("/models/pump-ae/1", headers=ADMIN).json()
            assert record["status"] == "draft" and record["parity_passed"] is False
    finally:
        server.stop()
        hub.stop()
