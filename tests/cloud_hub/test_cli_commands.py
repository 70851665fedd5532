"""``cloud-hub``'s device, enrollment, model, rollout and key commands against a running hub:
human and ``--json`` output, the change on the hub's side, and every mistake refused with a
non-zero exit and its reason on one line of stderr, never a traceback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cloud_hub.cli import main
from cloud_hub.cli.serve import ServerHandle
from cloud_hub.db.enrollments import Enrollment
from cloud_hub.db.registry_tables import ModelVersion, Rollout
from cloud_hub.db.tables import Device
from cloud_hub.registry.lifecycle import publish_model
from cloud_hub.service import Hub
from tests.cloud_hub.conftest import _ok, _refused, run_cli
from tests.cloud_hub.fleet import FakeDevice
from tests.cloud_hub.helpers import _row, tiny_artifact, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


def _published(hub: Hub, *, threshold: float = 0.5) -> tuple[str, int]:
    name, version = hub.register(tiny_artifact(threshold=threshold), name="pump-ae")
    with Session(hub.engine) as session:
        publish_model(session, name=name, version=version, releases=hub.releases)
    return name, version


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
