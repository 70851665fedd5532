"""Every ``cloud-hub`` client command run as an admin runs it, against a running hub: human and
``--json`` output, the change checked on the hub's side, and the mistakes an admin makes
(an unknown id, a value of the wrong kind, a bad time or JSON, an option left out) answered
with a non-zero exit and the reason on one line of stderr, never a traceback."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from cloud_hub.cli import main
from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.db.drift_tables import RetrainPolicy
from cloud_hub.db.enrollments import Enrollment
from cloud_hub.db.ops_tables import Incident, WebhookDelivery, WebhookRule
from cloud_hub.db.registry_tables import ModelVersion, Rollout, TrainingJob
from cloud_hub.db.tables import Device
from cloud_hub.registry.lifecycle import publish_model
from cloud_hub.service import Hub
from shared.messages import AnomalyEvent, ModelRef, encode
from simulator.broker import Broker
from simulator.ports import free_port
from tests.cloud_hub.conftest import hub_settings, run_cli, started_hub
from tests.cloud_hub.fleet import FakeDevice
from tests.cloud_hub.helpers import (
    enroll_devices,
    publish_wait,
    publisher_client,
    tiny_artifact,
    training_until_cancelled,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.hub]
Result = tuple[int, str, str]


def _refused(result: Result, *said: str) -> str:
    """A refusal as the CLI must give it: a non-zero exit, nothing on stdout, no traceback,
    and the reason (each of ``said``) on the last line of stderr (argparse puts its usage
    above it). Returns that line."""
    code, out, err = result
    assert code != 0, f"exit 0 for a refused command:\n{out}{err}"
    assert out == "", out
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines, "no reason given on stderr"
    reason = lines[-1]
    for text in said:
        assert text in reason, reason
    return reason


def _ok(result: Result) -> str:
    code, out, err = result
    assert code == 0, f"exit {code}:\n{out}{err}"
    return out


def _row(hub: Hub, table: Any, key: Any) -> Any:
    with Session(hub.engine) as session:
        return session.get(table, key)


def _published(hub: Hub, *, threshold: float = 0.5) -> tuple[str, int]:
    name, version = hub.register(tiny_artifact(threshold=threshold), name="pump-ae")
    with Session(hub.engine) as session:
        publish_model(session, name=name, version=version, releases=hub.releases)
    return name, version


@pytest.fixture
def fleet(broker: Broker, hub: Hub) -> Iterator[dict[str, FakeDevice]]:
    """pump-0 and pump-1 connected: they follow ``desired`` and report what they run."""
    devices = {d: FakeDevice(d, broker, hub.topics, hub.signing_key.key_id,
                             hub.signing_key.public_b64()) for d in ("pump-0", "pump-1")}
    try:
        wait_for(lambda: all(_row(hub, Device, d) for d in devices), 20, "the devices' rows")
        yield devices
    finally:
        for device in devices.values():
            device.close()


def test_devices_show_tag_and_list_by_tag_and_group(
    hub: Hub, server: ServerHandle, fleet: dict[str, FakeDevice],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _ok(run_cli(server, capsys, "devices", "tag", "pump-0", "--tags", "north,line-2",
                      "--group", "plant-a"))
    assert "plant-a" in out and "line-2,north" in out
    device = _row(hub, Device, "pump-0")
    assert (device.group, device.tags) == ("plant-a", ["line-2", "north"])

    listed = json.loads(_ok(run_cli(server, capsys, "--json", "devices", "list", "--tag",
                                    "north")))
    assert [d["device_id"] for d in listed] == ["pump-0"]
    out = _ok(run_cli(server, capsys, "devices", "list", "--group", "plant-a"))
    assert "pump-0" in out and "pump-1" not in out
    shown = json.loads(_ok(run_cli(server, capsys, "--json", "devices", "show", "pump-0")))
    assert (shown["group"], shown["tags"]) == ("plant-a", ["line-2", "north"])

    _ok(run_cli(server, capsys, "devices", "tag", "pump-0", "--tags", ""))  # clears the tags
    device = _row(hub, Device, "pump-0")
    assert (device.group, device.tags) == ("plant-a", []), "the group stays"

    # Neither --tags nor --group: it used to answer the unchanged device and exit 0.
    _refused(run_cli(server, capsys, "devices", "tag", "pump-0"),
             "devices tag needs --tags or --group")
    _refused(run_cli(server, capsys, "devices", "tag", "nope-9", "--tags", "a"),
             "HTTP 404", "device 'nope-9' is unknown")
    _refused(run_cli(server, capsys, "devices", "show", "nope-9"), "HTTP 404", "'nope-9'")
    _refused(run_cli(server, capsys, "--json", "devices", "show", "nope-9"), "HTTP 404")
    _refused(run_cli(server, capsys, "devices", "show"), "devices show needs a device id")


def test_devices_desired_and_models_rollback_move_a_device_and_refuse_unknown_ones(
    hub: Hub, server: ServerHandle, fleet: dict[str, FakeDevice],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _published(hub)
    name, v2 = _published(hub, threshold=0.7)

    def active(device_id: str, version: int) -> bool:
        row = _row(hub, Device, device_id)
        return bool(row.active_name == name and row.active_version == version)

    out = _ok(run_cli(server, capsys, "devices", "desired", "pump-0", "--model", f"{name}:{v2}"))
    assert '"version": 2' in out
    wait_for(lambda: active("pump-0", v2), 20, "pump-0 running v2")
    shown = json.loads(_ok(run_cli(server, capsys, "--json", "devices", "show", "pump-0")))
    assert shown["active_model"]["version"] == v2 and shown["in_sync"] is True

    done = json.loads(_ok(run_cli(server, capsys, "--json", "models", "rollback", f"{name}:1",
                                  "--devices", "pump-0")))
    assert done["devices"] == ["pump-0"] and done["release"] > 1
    wait_for(lambda: active("pump-0", 1), 20, "pump-0 back on v1")
    out = _ok(run_cli(server, capsys, "models", "rollback", f"{name}:{v2}"))
    assert out.startswith("rolled back to pump-ae:2 (release ")
    assert out.rstrip().endswith(": 1 device(s) pump-0")  # every device on pump-ae
    wait_for(lambda: active("pump-0", v2), 20, "pump-0 on v2 again")

    # NAME without :VERSION used to end in a traceback (ArgumentTypeError out of the command).
    _refused(run_cli(server, capsys, "devices", "desired", "pump-0", "--model", name),
             "'pump-ae' must be NAME:VERSION")
    _refused(run_cli(server, capsys, "devices", "desired", "pump-0", "--model", f"{name}:0"),
             "must be NAME:VERSION")
    _refused(run_cli(server, capsys, "devices", "desired", "pump-0", "--model", f"{name}:9"),
             "HTTP 404", "pump-ae v9 is not in the registry")
    _refused(run_cli(server, capsys, "devices", "desired", "pump-0"),
             "devices desired needs --model NAME:VERSION")
    # A device id nobody enrolled used to get a device row and a retained desired, exit 0.
    _refused(run_cli(server, capsys, "devices", "desired", "ghost-7", "--model", f"{name}:1"),
             "HTTP 404", "'ghost-7'", "not enrolled")
    _refused(run_cli(server, capsys, "models", "rollback", f"{name}:1", "--devices",
                     "pump-1,ghost-8"), "HTTP 422", "'ghost-8'", "not enrolled")
    assert _row(hub, Device, "ghost-7") is None and _row(hub, Device, "ghost-8") is None
    assert active("pump-0", v2) and _row(hub, Device, "pump-1").desired_version is None
    _refused(run_cli(server, capsys, "models", "rollback", f"{name}:9"), "HTTP 404")


def test_models_compare_download_and_retire(
    hub: Hub, server: ServerHandle, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    name, v1 = _published(hub)
    hub.register(tiny_artifact(threshold=0.7), name="pump-ae")

    compared = json.loads(_ok(run_cli(server, capsys, "--json", "models", "compare",
                                      "pump-ae:1", "pump-ae:2")))
    assert "threshold" in compared["differs"]
    assert (compared["a"]["threshold"], compared["b"]["threshold"]) == (0.5, 0.7)
    out = _ok(run_cli(server, capsys, "models", "compare", "pump-ae:1", "pump-ae:2"))
    [line] = [ln for ln in out.splitlines() if " threshold " in ln]
    assert "0.5" in line and "0.7" in line and "*" in line
    _refused(run_cli(server, capsys, "models", "compare", "pump-ae:1"), "needs two")
    _refused(run_cli(server, capsys, "models", "compare", "pump-ae:1", "pump-ae:7"),
             "HTTP 404", "pump-ae v7")

    target = tmp_path / "v1.tflite"
    out = _ok(run_cli(server, capsys, "models", "download", "pump-ae:1", "-o", str(target)))
    assert f"wrote {target}" in out
    manifest = json.loads(_ok(run_cli(server, capsys, "--json", "models", "show",
                                      "pump-ae:1")))["manifest"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == manifest["sha256"]
    # A folder that is not there (a file in its place): it used to end in a traceback.
    _refused(run_cli(server, capsys, "models", "download", "pump-ae:1", "-o",
                     str(target / "inside.tflite")), "cannot write", str(target))
    _refused(run_cli(server, capsys, "models", "download", "pump-ae:5"), "HTTP 404")

    out = _ok(run_cli(server, capsys, "models", "retire", f"{name}:{v1}"))
    assert out.startswith("retired pump-ae:1")
    with Session(hub.engine) as session:
        record = session.exec(select(ModelVersion).where(
            ModelVersion.name == name, ModelVersion.version == v1)).one()
    assert record.status == "retired"
    listed = json.loads(_ok(run_cli(server, capsys, "--json", "models", "list", "--status",
                                    "retired")))
    assert [(m["name"], m["version"]) for m in listed] == [(name, v1)]
    # The choices are named as typed, not as the enum's repr.
    reason = _refused(run_cli(server, capsys, "models", "list", "--status", "gone"),
                      "invalid choice: 'gone'", "'draft', 'published', 'retired'")
    assert "ModelStatus" not in reason
    _refused(run_cli(server, capsys, "models", "retire", "pump-ae:8"), "HTTP 404")
    _refused(run_cli(server, capsys, "models", "show", "pump-ae"), "must be NAME:VERSION")


def _rollout(hub: Hub, rollout_id: int) -> str:
    return str(_row(hub, Rollout, rollout_id).status)


def test_rollout_status_pause_resume_abort_and_rollback(
    hub: Hub, server: ServerHandle, fleet: dict[str, FakeDevice],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, version = _published(hub)
    slow = '{"canary_size": 1, "wave_size": 1, "min_observation_s": 600}'
    created = json.loads(_ok(run_cli(server, capsys, "--json", "rollout", "create", "--model",
                                     f"{name}:{version}", "--devices", "pump-0,pump-1",
                                     "--policy", slow)))
    rid = created["id"]
    assert _rollout(hub, rid) == "running" and created["devices_total"] == 2

    out = _ok(run_cli(server, capsys, "rollout", "status"))
    assert "pump-ae:1" in out and "running" in out
    status = json.loads(_ok(run_cli(server, capsys, "--json", "rollout", "status", str(rid))))
    assert sorted(d["device_id"] for d in status["devices"]) == ["pump-0", "pump-1"]
    out = _ok(run_cli(server, capsys, "rollout", "status", str(rid)))
    assert "pump-0" in out and "devices" in out

    out = _ok(run_cli(server, capsys, "rollout", "pause", str(rid)))
    assert "paused" in out and _rollout(hub, rid) == "paused"
    _refused(run_cli(server, capsys, "rollout", "pause", str(rid)),
             "HTTP 409", f"rollout {rid} is paused")
    resumed = json.loads(_ok(run_cli(server, capsys, "--json", "rollout", "resume", str(rid))))
    assert resumed["status"] == "running" and _rollout(hub, rid) == "running"
    out = _ok(run_cli(server, capsys, "rollout", "abort", str(rid)))
    assert "aborted" in out and _rollout(hub, rid) == "aborted"
    _refused(run_cli(server, capsys, "rollout", "resume", str(rid)), "HTTP 409", "aborted")
    rolled = json.loads(_ok(run_cli(server, capsys, "--json", "rollout", "rollback", str(rid))))
    assert rolled["status"] in ("rolling_back", "rolled_back")
    assert _rollout(hub, rid) in ("rolling_back", "rolled_back")

    for action in ("status", "pause", "resume", "abort", "rollback"):
        _refused(run_cli(server, capsys, "rollout", action, "99"),
                 "HTTP 404", "rollout 99 does not exist")
    _refused(run_cli(server, capsys, "rollout", "pause"), "rollout pause needs the rollout id")
    _refused(run_cli(server, capsys, "rollout", "pause", "first"), "invalid int value")
    _refused(run_cli(server, capsys, "rollout", "create", "--devices", "pump-0"),
             "rollout create needs --model")
    # Each used to end in a traceback (the version check and json.loads ran in the command).
    _refused(run_cli(server, capsys, "rollout", "create", "--model", name, "--devices",
                     "pump-0"), "'pump-ae' must be NAME:VERSION")
    _refused(run_cli(server, capsys, "rollout", "create", "--model", f"{name}:1",
                     "--devices", "pump-0", "--policy", "{canary_size: 1}"),
             "--policy", "not JSON")
    _refused(run_cli(server, capsys, "rollout", "create", "--model", f"{name}:1",
                     "--devices", "pump-0", "--policy", "[1]"), "--policy", "a JSON object")
    _refused(run_cli(server, capsys, "rollout", "create", "--model", f"{name}:1",
                     "--devices", "ghost-3"), "HTTP 422", "'ghost-3'")
    _refused(run_cli(server, capsys, "rollout", "create", "--model", f"{name}:1",
                     "--group", "nowhere"), "HTTP 422", "selects no device")
    assert len(json.loads(_ok(run_cli(server, capsys, "--json", "rollout", "status")))) == 1


def test_jobs_list_show_and_cancel_a_running_job(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    started = threading.Event()
    hub = Hub(hub_settings(broker, tmp_path / "hub"),
              run_training=training_until_cancelled(started))
    enroll_devices(hub)
    server = serve_in_thread(hub)
    csv_file = tmp_path / "readings.csv"
    csv_file.write_text("a,b\n" + "".join(f"{i % 7},{i % 5}\n" for i in range(200)))
    try:
        job = json.loads(_ok(run_cli(server, capsys, "--json", "train", "slow-ae", "--csv",
                                     str(csv_file), "--window", "8", "--no-wait")))
        assert job["status"] in ("queued", "running")
        assert started.wait(20)
        wait_for(lambda: _row(hub, TrainingJob, job["id"]).status == "running", 20, "running")
        out = _ok(run_cli(server, capsys, "jobs"))
        assert "slow-ae" in out and "running" in out
        shown = json.loads(_ok(run_cli(server, capsys, "--json", "jobs", str(job["id"]))))
        assert shown["status"] == "running" and shown["request"]["spec"]["window"] == 8
        # one job in words, as in the list (it was the hub's progress object, printed raw)
        out = _ok(run_cli(server, capsys, "jobs", str(job["id"])))
        assert "slow-ae" in out and shown["progress"]["stage"] in out and "fraction" not in out

        _ok(run_cli(server, capsys, "jobs", "--cancel", str(job["id"])))
        wait_for(lambda: _row(hub, TrainingJob, job["id"]).status == "cancelled", 20,
                 "the job cancelled on the hub")
        _refused(run_cli(server, capsys, "jobs", "--cancel", str(job["id"])),
                 "HTTP 409", f"training job {job['id']} is cancelled")
        _refused(run_cli(server, capsys, "jobs", "99"), "HTTP 404", "training job 99")
        _refused(run_cli(server, capsys, "jobs", "--cancel", "99"), "HTTP 404")
        # Id 0 is no job: it used to list every job, or, with --cancel, list them and exit 0.
        _refused(run_cli(server, capsys, "jobs", "0"), "HTTP 422", "job_id")
        _refused(run_cli(server, capsys, "jobs", "--cancel", "0"), "HTTP 422", "job_id")

        # A missing CSV or a --spec that is not JSON used to end in a traceback.
        _refused(run_cli(server, capsys, "train", "x-ae", "--csv", str(tmp_path / "none.csv")),
                 "--csv", "none.csv")
        _refused(run_cli(server, capsys, "train", "x-ae", "--spec", "{window: 8}"),
                 "--spec", "not JSON")
        _refused(run_cli(server, capsys, "train", "x-ae", "--spec", '{"bogus": 1}'),
                 "HTTP 422", "spec.bogus")
        _refused(run_cli(server, capsys, "train", "x-ae", "--window", "eight"),
                 "--window", "invalid int value")
        _refused(run_cli(server, capsys, "train", "x-ae", "--since", "last tuesday"),
                 "'last tuesday' is not a time")
        _refused(run_cli(server, capsys, "train", "bad name"), "HTTP 422", "body.name")
        _refused(run_cli(server, capsys, "train"), "the following arguments are required")
        assert [j.id for j in _jobs(hub)] == [job["id"]], "no job started by a refusal"
    finally:
        server.stop()
        hub.stop()


def _jobs(hub: Hub) -> list[TrainingJob]:
    with Session(hub.engine) as session:
        return list(session.exec(select(TrainingJob)))


def test_api_keys_list_and_refusals(
    server: ServerHandle, capsys: pytest.CaptureFixture[str],
) -> None:
    created = json.loads(_ok(run_cli(server, capsys, "--json", "api-keys", "create", "--name",
                                     "dashboard")))
    listed = json.loads(_ok(run_cli(server, capsys, "--json", "api-keys", "list")))
    assert {(k["name"], k["scope"]) for k in listed} >= {("dashboard", "read")}
    assert all("key" not in k for k in listed), "the secret is shown once, at creation"
    out = _ok(run_cli(server, capsys, "api-keys", "list"))
    assert "dashboard" in out and created["prefix"] in out
    revoked = json.loads(_ok(run_cli(server, capsys, "--json", "api-keys", "revoke", "--id",
                                     str(created["id"]))))
    assert revoked["revoked_at"] is not None
    _refused(run_cli(server, capsys, "api-keys", "revoke", "--id", "99"),
             "HTTP 404", "API key id 99 does not exist")
    _refused(run_cli(server, capsys, "api-keys", "revoke"), "api-keys revoke needs --id")
    _refused(run_cli(server, capsys, "api-keys", "create"), "api-keys create needs --name")
    _refused(run_cli(server, capsys, "api-keys", "create", "--name", "x", "--scope", "root"),
             "invalid choice: 'root'")


def _send_events(broker: Broker, hub: Hub, device_id: str, count: int) -> None:
    client = publisher_client(broker)
    try:
        t0 = time.time() - 30
        for seq in range(count):
            event = AnomalyEvent(epoch="0123456789abcdef", device_id=device_id, seq=seq,
                                 ts=(t0 + seq, t0 + seq + 1.0), score=2.0 + seq, threshold=1.0,
                                 model=ModelRef(name="pump-ae", version=1),
                                 channels=["bearing"], detected_at=t0 + seq + 1.0)
            publish_wait(client, hub.topics.anomalies(device_id), encode(event))
    finally:
        client.disconnect()
        client.loop_stop()


def test_incidents_show_ack_resolve_and_webhook_rules_with_their_deliveries(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with started_hub(broker, tmp_path / "hub", incident_tick_s=0.1) as hub:
        server = serve_in_thread(hub)
        try:
            _incidents_and_webhooks(broker, hub, server, capsys)
        finally:
            server.stop()


def _incidents_and_webhooks(broker: Broker, hub: Hub, server: ServerHandle,
                            capsys: pytest.CaptureFixture[str]) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: deliveries fail
    rule = json.loads(_ok(run_cli(server, capsys, "--json", "webhooks", "create", "--name",
                                  "on-call", "--endpoint", nobody, "--min-score", "1.5")))
    out = _ok(run_cli(server, capsys, "webhooks", "disable", str(rule["id"])))
    assert "False" in out and _row(hub, WebhookRule, rule["id"]).enabled is False
    enabled = json.loads(_ok(run_cli(server, capsys, "--json", "webhooks", "enable",
                                     str(rule["id"]))))
    assert enabled["enabled"] is True and _row(hub, WebhookRule, rule["id"]).enabled is True

    _send_events(broker, hub, "pump-3", 2)

    def incident() -> Incident | None:
        with Session(hub.engine) as session:
            found = session.exec(select(Incident)).first()
        return found if found is not None and found.events == 2 else None

    iid = wait_for(incident, 20, "the incident of two events").id
    out = _ok(run_cli(server, capsys, "incidents"))
    assert out.startswith(f"#{iid}  open  pump-3") and "2 event(s)" in out
    listed = json.loads(_ok(run_cli(server, capsys, "--json", "incidents", "list", "--state",
                                    "open")))
    assert [i["id"] for i in listed] == [iid]
    out = _ok(run_cli(server, capsys, "incidents", "show", str(iid)))
    assert len(out.splitlines()) == 3 and out.count("channels bearing") == 3
    assert json.loads(_ok(run_cli(server, capsys, "--json", "incidents", "show",
                                  str(iid))))["events"] == 2

    out = _ok(run_cli(server, capsys, "incidents", "ack", str(iid), "--note", "on my way"))
    assert out.startswith(f"#{iid}  acknowledged by ")
    acked = _row(hub, Incident, iid)
    assert (acked.state, acked.ack_note) == ("acknowledged", "on my way")
    resolved = json.loads(_ok(run_cli(server, capsys, "--json", "incidents", "resolve",
                                      str(iid), "--note", "bearing replaced")))
    assert resolved["state"] == "resolved"
    assert _row(hub, Incident, iid).resolve_note == "bearing replaced"
    _refused(run_cli(server, capsys, "incidents", "resolve", str(iid)), "HTTP 409")
    _refused(run_cli(server, capsys, "incidents", "show", "99"),
             "HTTP 404", "incident 99 does not exist")
    _refused(run_cli(server, capsys, "incidents", "ack", "99"), "HTTP 404")
    _refused(run_cli(server, capsys, "incidents", "ack"), "incidents ack needs the incident id")
    _refused(run_cli(server, capsys, "incidents", "show", "last"), "invalid int value")
    reason = _refused(run_cli(server, capsys, "incidents", "list", "--state", "closed"),
                      "invalid choice: 'closed'", "'open'")
    assert "IncidentState" not in reason

    # The incident went to the rule: one delivery, failing (nothing listens there).
    def delivery() -> WebhookDelivery | None:
        with Session(hub.engine) as session:
            return session.exec(select(WebhookDelivery).where(
                WebhookDelivery.rule_id == rule["id"])).first()

    wait_for(delivery, 20, "the rule's delivery")
    sent = json.loads(_ok(run_cli(server, capsys, "--json", "webhooks", "deliveries",
                                  str(rule["id"]))))
    assert sent and {d["incident_id"] for d in sent} == {iid}
    out = _ok(run_cli(server, capsys, "webhooks", "deliveries"))
    assert "deliveries" in out and "opened" in out
    _refused(run_cli(server, capsys, "webhooks", "disable", "99"),
             "HTTP 404", "webhook rule 99 does not exist")
    _refused(run_cli(server, capsys, "webhooks", "enable"), "webhooks enable needs the rule id")
    _refused(run_cli(server, capsys, "webhooks", "create", "--name", "x"),
             "webhooks create needs --name and --endpoint")
    _refused(run_cli(server, capsys, "webhooks", "create", "--name", "x", "--endpoint",
                     "mailto:ops@example.com"), "HTTP 422", "http")
    _refused(run_cli(server, capsys, "webhooks", "create", "--name", "x", "--endpoint",
                     nobody, "--min-score", "high"), "--min-score", "invalid float value")
    reason = _refused(run_cli(server, capsys, "webhooks", "deliveries", "--status", "lost"),
                      "invalid choice: 'lost'", "'failed'")
    assert "DeliveryStatus" not in reason


def test_retrain_policies_keep_their_state_and_drift_and_retrain_refusals(
    hub: Hub, server: ServerHandle, fleet: dict[str, FakeDevice],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _ok(run_cli(server, capsys, "retrain", "policy", "plant-a", "--hold", "60", "--disable"))
    assert _row(hub, RetrainPolicy, "plant-a").enabled is False
    # Changing another figure used to enable a disabled policy again.
    policy = json.loads(_ok(run_cli(server, capsys, "--json", "retrain", "policy", "plant-a",
                                    "--hold", "90", "--ratio", "3")))
    assert (policy["enabled"], policy["drift_hold_s"], policy["max_anomaly_rate_ratio"]) == (
        False, 90.0, 3.0)
    assert _row(hub, RetrainPolicy, "plant-a").enabled is False
    out = _ok(run_cli(server, capsys, "retrain", "policy", "plant-a", "--enable"))
    assert "True" in out and _row(hub, RetrainPolicy, "plant-a").enabled is True
    out = _ok(run_cli(server, capsys, "retrain", "policies"))
    assert "plant-a" in out and "90" in out
    _ok(run_cli(server, capsys, "retrain", "policy", "--cooldown", "120"))  # "default"
    assert _row(hub, RetrainPolicy, "default").cooldown_s == 120.0

    _refused(run_cli(server, capsys, "retrain", "policy", "plant-a", "--enable", "--disable"),
             "not allowed with argument")
    _refused(run_cli(server, capsys, "retrain", "policy", "plant-a", "--spec", "{epochs: 3}"),
             "--spec", "not JSON")
    _refused(run_cli(server, capsys, "retrain", "policy", "plant-a", "--rollout", "[1]"),
             "--rollout", "a JSON object")
    _refused(run_cli(server, capsys, "retrain", "policy", "plant-a", "--hold", "-1"),
             "HTTP 422", "drift_hold_s")
    _refused(run_cli(server, capsys, "retrain", "policy", "plant-a", "--hold", "1h"),
             "--hold", "invalid float value")
    assert _row(hub, RetrainPolicy, "plant-a").drift_hold_s == 90.0
    _refused(run_cli(server, capsys, "retrain", "delete-policy", "plant-z"),
             "HTTP 404", "plant-z has no retrain policy")
    # A run id that is not a number used to end in a traceback.
    _refused(run_cli(server, capsys, "retrain", "show", "latest"), "retrain show", "'latest'")
    _refused(run_cli(server, capsys, "retrain", "show", "9"),
             "HTTP 404", "retrain run 9 does not exist")
    _refused(run_cli(server, capsys, "retrain", "show"), "retrain show needs the run id")
    _refused(run_cli(server, capsys, "retrain", "start", "--devices", "pump-1"),
             "retrain start needs --reason")
    _refused(run_cli(server, capsys, "retrain", "start", "--reason", "why not"),
             "HTTP 422", "devices or group")
    # An empty group, or one whose devices run no model, used to say "devices [] run no model".
    _refused(run_cli(server, capsys, "retrain", "start", "--group", "plant-q", "--reason", "x"),
             "HTTP 409", "group 'plant-q' has no devices")
    _ok(run_cli(server, capsys, "devices", "tag", "pump-0", "--group", "plant-q"))
    assert _row(hub, Device, "pump-0").active_name is None
    _refused(run_cli(server, capsys, "retrain", "start", "--group", "plant-q", "--reason", "x"),
             "HTTP 409", "no device of group 'plant-q' runs a model")
    assert json.loads(_ok(run_cli(server, capsys, "--json", "retrain", "runs"))) == []
    assert run_cli(server, capsys, "retrain", "runs")[2] == "no retrain runs\n"

    code, out, err = run_cli(server, capsys, "drift")
    assert (code, out, err) == (0, "", "no drift summaries yet\n")
    assert json.loads(_ok(run_cli(server, capsys, "--json", "drift", "list", "--state",
                                  "drift"))) == []
    _refused(run_cli(server, capsys, "drift", "show", "pump-1"),
             "HTTP 404", "pump-1 has sent no drift summary")
    _refused(run_cli(server, capsys, "drift", "show"), "drift show needs a device id")
    _refused(run_cli(server, capsys, "drift", "list", "--state", "moving"),
             "invalid choice: 'moving'")


def test_anomalies_tail_refuses_a_poll_interval_or_duration_that_is_not_positive(
    server: ServerHandle, capsys: pytest.CaptureFixture[str],
) -> None:
    # A negative interval used to end in a traceback from time.sleep after the first poll;
    # 0 polled the hub without a pause.
    for value in ("-1", "0"):
        _refused(run_cli(server, capsys, "anomalies", "tail", "--follow", "--interval", value,
                         "--for", "1"), "--interval", "must be a positive number")
    _refused(run_cli(server, capsys, "anomalies", "tail", "--follow", "--for", "-3"),
             "--for", "must be a positive number")
    code, out, err = run_cli(server, capsys, "anomalies", "tail", "--follow", "--interval",
                             "0.05", "--for", "0.2")
    assert (code, out) == (0, "") and "no anomaly events yet; waiting" in err
    _refused(run_cli(server, capsys, "anomalies", "tail", "--limit", "0"),
             "HTTP 422", "limit")


def test_enroll_checks_its_output_folder_before_the_hub_enrolls_the_device(
    hub: Hub, server: ServerHandle, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """A bundle that cannot be written used to be found out after the hub had enrolled the
    device: a traceback, the device's password lost, and enrolling again refused."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _refused(run_cli(server, capsys, "devices", "enroll", "press-1", "--out",
                     str(blocker / "press-1")), "cannot write", str(blocker / "press-1"))
    assert _row(hub, Enrollment, "press-1") is None, "the hub enrolled nothing"
    out = _ok(run_cli(server, capsys, "devices", "enroll", "press-1", "--out",
                      str(tmp_path / "press-1")))
    assert "enrolled press-1" in out and (tmp_path / "press-1" / "agent.toml").exists()
    assert _row(hub, Enrollment, "press-1").revoked_at is None

    _refused(run_cli(server, capsys, "devices", "enroll", "--from", str(tmp_path / "ids.txt")),
             "--from", "ids.txt")
    _refused(run_cli(server, capsys, "devices", "enroll", "press-1", "--out",
                     str(tmp_path / "again")), "HTTP 409", "enrolled already")
    _refused(run_cli(server, capsys, "devices", "enroll", "bad id"), "HTTP 422", "device_id")
    _refused(run_cli(server, capsys, "devices", "enroll", "press-2", "--mqtt-port", "tls"),
             "--mqtt-port", "invalid int value")
    _refused(run_cli(server, capsys, "devices", "revoke", "press-9"),
             "HTTP 404", "'press-9' is not enrolled")


def test_keys_fingerprint_reads_the_hubs_database_and_makes_none_elsewhere(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(hub.settings.data_dir))
    assert main(["keys", "fingerprint"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"key {hub.signing_key.key_id} (active)  SHA256:")
    # A mistyped data directory used to get a new, empty database (and the folder).
    elsewhere = tmp_path / "not-a-hub"
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(elsewhere))
    assert main(["keys", "fingerprint"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no hub database" in captured.err
    assert not elsewhere.exists()
