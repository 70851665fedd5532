"""Training runs in a child process of ``cloud-hub serve``: TensorFlow never loads into the hub,
a training child that dies (here: SIGKILL, as the OOM killer would) fails its job with the
reason while the hub goes on ingesting, and a cancel stops the child."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cloud_hub.cli.client import HubClient
from shared.messages import TelemetryBatch, encode
from simulator.broker import Broker
from simulator.hub_process import HubProcess
from tests.cloud_hub.helpers import publish_wait, publisher_client
from tests.integration.support import LONG_TRAINING, start_training, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]

QUICK = '{"window": 8, "epochs": 2, "compare_modes": false}'


def _loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _training_children(pid: int) -> list[int]:
    """Children of ``pid`` started by multiprocessing's spawn (not its resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


def _finished(client: HubClient, job_id: int) -> dict[str, object] | None:
    job: dict[str, object] = client.get(f"/training-jobs/{job_id}")
    return job if job["status"] not in ("queued", "running") else None


def test_training_runs_in_a_child_and_a_killed_child_fails_only_its_job(
    hub: HubProcess, client: HubClient, broker: Broker
) -> None:
    assert hub.pid is not None
    job_id = start_training(client, "child-ae", QUICK)
    job = wait_for(lambda: _finished(client, job_id), 300, "the training job to finish")
    assert job["status"] == "succeeded", job["error"]
    maps = _loaded_libraries(hub.pid)
    assert "tensorflow" not in maps, "the hub process loaded TensorFlow"
    status = Path(f"/proc/{hub.pid}/status").read_text()
    rss_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])
    print(f"hub RSS after one training job: {rss_kb / 1024:.0f} MB")  # noqa: T201

    job_id = start_training(client, "child-ae", LONG_TRAINING)
    wait_for(lambda: client.get(f"/training-jobs/{job_id}")["progress"]["stage"] == "fitting",
             300, "the long job to start fitting")
    children = _training_children(hub.pid)
    assert len(children) == 1, children
    os.kill(children[0], signal.SIGKILL)
    job = wait_for(lambda: _finished(client, job_id), 60, "the killed job to end")
    assert job["status"] == "failed"
    assert "killed by SIGKILL" in str(job["error"]), job["error"]

    # a cancel reaches the child's training loop
    job_id = start_training(client, "child-ae", LONG_TRAINING)
    wait_for(lambda: client.get(f"/training-jobs/{job_id}")["progress"]["stage"] == "fitting",
             300, "the third job to start fitting")
    client.post(f"/training-jobs/{job_id}/cancel")
    job = wait_for(lambda: _finished(client, job_id), 60, "the cancelled job to end")
    assert job["status"] == "cancelled", job
    wait_for(lambda: not _training_children(hub.pid), 30, "the training child to exit")

    assert hub.running
    client.post("/devices/after-kill/enroll")
    device = publisher_client(broker, client_id="test-gateway")
    try:
        batch = TelemetryBatch(
                epoch="0123456789abcdef", device_id="after-kill", seq=0, channels=["a"],
                ts=[1.0, 2.0],
                               values=[[1.0], [2.0]])
        publish_wait(device, "edgeloop/v1/devices/after-kill/telemetry", encode(batch))
    finally:
        device.disconnect()
        device.loop_stop()
    wait_for(lambda: any(d["device_id"] == "after-kill" and d["telemetry_readings"] == 2
                         for d in client.get("/devices")), 30, "ingest after the kill")

    # The access log: the writes are there, the many polling reads are not (DEBUG).
    access = [ln for ln in hub.log_path.read_text().splitlines() if '" 20' in ln]
    assert any('"POST /api/v1/training-jobs/csv' in ln for ln in access), access
    assert not [ln for ln in access if '"GET ' in ln], access
