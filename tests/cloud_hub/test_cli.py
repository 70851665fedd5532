"""The cloud-hub CLI against a running hub: JSON output, the parity gate, keys, rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_hub.cli import main
from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch, encode
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY, hub_settings, run_cli
from tests.cloud_hub.helpers import (
    enroll_devices,
    publish_wait,
    publisher_client,
    stand_in_training,
    tiny_artifact,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.hub]


def test_a_model_failing_the_parity_gate_cannot_be_published_from_the_cli(
    hub: Hub, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    name, version = hub.register(tiny_artifact(agreement=0.95), name="pump-ae")
    code, _, err = run_cli(server, capsys, "models", "publish", f"{name}:{version}")
    assert code == 2
    assert "HTTP 409" in err and "decision_agreement" in err
    code, out, _ = run_cli(server, capsys, "--json", "models", "list")
    assert code == 0
    assert [(m["version"], m["status"]) for m in json.loads(out)] == [(version, "draft")]


def test_train_follows_the_job_and_models_show_the_result(
    broker: Broker,
    hub: Hub, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    client = publisher_client(broker)
    try:
        batch = TelemetryBatch(device_id="pump-1", epoch="0123456789abcdef", seq=0,
                               channels=["a", "b"],
                               ts=[float(i) for i in range(100)], values=[[1.0, 2.0]] * 100)
        publish_wait(client, hub.topics.telemetry("pump-1"), encode(batch))
    finally:
        client.disconnect()
        client.loop_stop()
    wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == 1, what="telemetry")
    code, out, _ = run_cli(server, capsys, "--json", "train", "pump-ae", "--window", "8",
                           "--epochs", "2")
    assert code == 0, out
    job = json.loads(out)
    assert job["status"] == "succeeded" and job["model"] == {"name": "pump-ae", "version": 1}
    code, out, _ = run_cli(server, capsys, "--json", "models", "show", "pump-ae:1")
    assert json.loads(out)["training"]["rows"] == 100
    code, out, _ = run_cli(server, capsys, "models", "list")
    assert code == 0 and "pump-ae" in out


def test_api_keys_created_and_revoked_from_the_cli(
    server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(server, capsys, "--json", "api-keys", "create", "--name", "ro")
    created = json.loads(out)
    assert code == 0 and created["scope"] == "read"
    code, _, err = run_cli(server, capsys, "devices", "tag", "pump-1", "--tags", "a",
                           key=created["key"])
    assert code == 2 and "HTTP 403" in err
    assert run_cli(server, capsys, "api-keys", "revoke", "--id", str(created["id"]))[0] == 0
    code, _, err = run_cli(server, capsys, "devices", "list", key=created["key"])
    assert code == 2 and "HTTP 401" in err


def test_train_from_a_skab_csv_leaves_labels_out_and_models_list_shows_channels(
    server: ServerHandle, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    header = ("datetime;Accelerometer1RMS;Current;Volume Flow RateRMS;anomaly;changepoint")
    rows = [f"2020-03-09 10:{i // 60:02d}:{i % 60:02d};0.0{i % 7};1.{i % 5};3{i % 3};0.0;0.0"
            for i in range(300)]
    csv_file = tmp_path / "skab.csv"
    csv_file.write_text("\n".join([header, *rows]) + "\n")
    code, out, err = run_cli(server, capsys, "--json", "train", "skab-ae", "--csv", str(csv_file),
                             "--window", "8", "--epochs", "2")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    code, out, _ = run_cli(server, capsys, "--json", "models", "list")
    assert json.loads(out)[0]["channels"] == ["Accelerometer1RMS", "Current",
                                              "Volume Flow RateRMS"]
    code, out, _ = run_cli(server, capsys, "models", "list")
    assert code == 0 and "Volume Flow RateRMS" in out and "anomaly" not in out
    code, out, err = run_cli(server, capsys, "--json", "train", "skab-ae", "--csv", str(csv_file),
                             "--channels", "Current,anomaly", "--window", "8", "--epochs", "2")
    assert code == 0, err
    code, out, _ = run_cli(server, capsys, "--json", "models", "show", "skab-ae:2")
    assert json.loads(out)["channels"] == ["Current", "anomaly"]


def test_train_exits_non_zero_with_the_reason_when_the_model_cannot_be_published(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = Hub(hub_settings(broker, tmp_path / "hub"),
              run_training=stand_in_training(agreement=0.95))
    enroll_devices(hub)
    hub.start()
    server = serve_in_thread(hub)
    try:
        client = publisher_client(broker)
        try:
            batch = TelemetryBatch(
                    epoch="0123456789abcdef", device_id="pump-1", seq=0, channels=["a", "b"],
                                   ts=[float(i) for i in range(100)], values=[[1.0, 2.0]] * 100)
            publish_wait(client, hub.topics.telemetry("pump-1"), encode(batch))
        finally:
            client.disconnect()
            client.loop_stop()
        wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == 1, what="telemetry")
        code, out, err = run_cli(server, capsys, "train", "pump-ae", "--window", "8",
                                 "--epochs", "3")
        assert code == 1
        assert "job 1 failed: model pump-ae:1 (done after 3 epochs loss=0.3333)" in out
        assert "cannot be published" in out and "decision_agreement 0.9500" in out
        assert "0/3" not in out + err
    finally:
        server.stop()
        hub.stop()


def test_deleting_a_webhook_rule_and_a_retrain_policy_from_the_cli(
    server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hub answers these deletes 204 with no body: the CLI says what it deleted, and
    exits 0 (it used to read the empty body as JSON and fail after the delete). The
    webhooks command reaches the hub given by --url, before or after it (its own --url
    used to take the hub's place)."""
    code, out, _ = run_cli(server, capsys, "--json", "webhooks", "create", "--name", "on-call",
                           "--endpoint", "https://alerts.example.com/edgeloop")
    assert code == 0
    rule = json.loads(out)
    code, out, err = run_cli(server, capsys, "webhooks", "delete", str(rule["id"]))
    assert (code, err) == (0, "") and f"deleted webhook rule {rule['id']}" in out
    code, out, _ = run_cli(server, capsys, "--json", "webhooks", "list")
    assert code == 0 and json.loads(out) == []
    code = main(["webhooks", "list", "--url", server.base_url, "--api-key", ADMIN_KEY])
    assert code == 0 and "webhook rules" in capsys.readouterr().out

    assert run_cli(server, capsys, "retrain", "policy", "plant-a", "--hold", "60")[0] == 0
    code, out, err = run_cli(server, capsys, "retrain", "delete-policy", "plant-a")
    assert (code, err) == (0, "") and "retrain policy of plant-a deleted" in out
    code, out, _ = run_cli(server, capsys, "--json", "retrain", "policies")
    assert code == 0 and "plant-a" not in [p["group"] for p in json.loads(out)]
