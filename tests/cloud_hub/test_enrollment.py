"""Enrollment and revocation against a real secure mosquitto and an in-process hub: a bundle
runs as it is, an unenrolled device is refused and counted, training and rollouts take
enrolled devices only, and a revoked device is disconnected and refused."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.fernet import Fernet
from sqlmodel import Session, select

from cloud_hub.cli import main
from cloud_hub.cli.serve import ServerHandle
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.tables import DeadLetter, Device
from cloud_hub.identity.enrollment import EnrollmentProgress
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch, encode
from simulator.broker import Broker, Credential
from simulator.process import start_child
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import DeviceConnection, connack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"X-API-Key": ADMIN_KEY}



@pytest.fixture
def api(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url + "/api/v1", headers=ADMIN, timeout=30) as c:
        yield c


def _cli(server: ServerHandle, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["--url", server.base_url, "--api-key", ADMIN_KEY, *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _batch(device_id: str, seq: int) -> bytes:
    return encode(TelemetryBatch(device_id=device_id, epoch="0123456789abcdef", seq=seq,
                                 channels=["a"], ts=[float(seq)], values=[[1.0]]))


def test_an_enrolled_bundle_runs_as_it_is(
    broker: Broker, hub: Hub, server: ServerHandle, api: httpx.Client,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle"
    out = _cli(server, capsys, "devices", "enroll", "press-7", "--out", str(bundle),
               "--state-dir", str(tmp_path / "state"))
    assert "SHA256:" in out and hub.signing_key.key_id in out
    config = tomllib.loads((bundle / "agent.toml").read_text())
    assert oct((bundle / "agent.toml").stat().st_mode & 0o777) == "0o600"
    assert config["mqtt"]["tls"] is True and config["mqtt"]["username"] == "press-7"
    assert config["trust"]["keys"] == {hub.signing_key.key_id: hub.signing_key.public_b64()}
    assert (bundle / "ca.crt").read_text() == Path(str(broker.ca_file)).read_text()
    log = (tmp_path / "agent.log").open("w")
    agent = start_child([sys.executable, "-m", "edge_agent.cli", "run", "--config",
                         str(bundle / "agent.toml")], cwd=tmp_path, stdout=log,
                        stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        def stored() -> bool:
            rows = api.get("/telemetry/summary").json()
            return any(r["device_id"] == "press-7" and r["readings"] > 0 for r in rows)

        wait_for(stored, 60, "telemetry from the enrolled bundle's agent")
    finally:
        agent.terminate()
        agent.wait(30)
        log.close()
    listed = api.get("/enrollments").json()
    assert any(e["device_id"] == "press-7" and e["revoked_at"] is None for e in listed)


def test_a_device_the_hub_did_not_enroll_is_refused_and_counted(
    broker: Broker, hub: Hub
) -> None:
    # The broker lets it in (a credential made outside the hub); the hub's registry does not.
    device = DeviceConnection(broker, broker.add_device("stranger-1"))
    try:
        assert device.connack.get(timeout=10) == "Success"
        assert device.send(hub.topics.telemetry("stranger-1"), _batch("stranger-1", 0)) == "sent"
        wait_for(lambda: hub.ingest.snapshot()["unenrolled_refused"] >= 1, 10,
                 "the refusal counted")
    finally:
        device.close()
    with Session(hub.engine) as session:
        assert session.get(Device, "stranger-1") is None, "an unenrolled device was registered"
        letters = session.exec(select(DeadLetter)).all()
    assert any("not enrolled" in d.reason and "stranger-1" in d.topic for d in letters)


def test_training_and_rollout_targets_take_enrolled_devices_only(
    hub: Hub, api: httpx.Client
) -> None:
    job = api.post("/training-jobs", json={"name": "m", "devices": ["ghost-1"]})
    if job.status_code < 400:  # a queued job must end failed, naming the device
        job_id = job.json()["id"]
        done = wait_for(lambda: (j := api.get(f"/training-jobs/{job_id}").json())["status"]
                        not in ("queued", "running") and j, 30, "the job to end")
        assert done["status"] == "failed" and "not enrolled" in done["error"], done
    else:
        assert "not enrolled" in job.text, job.text
    name, version = hub.register(__import__("tests.cloud_hub.helpers",
                                            fromlist=["tiny_artifact"]).tiny_artifact(),
                                 name="pump-ae")
    assert api.post(f"/models/{name}/{version}/publish").status_code == 200
    unknown = api.post("/rollouts", json={"model": {"name": name, "version": version},
                                          "target": {"devices": ["ghost-1"]}})
    assert unknown.status_code == 422 and "ghost-1" in unknown.text, unknown.text
    # A device the hub knows (it sent data while enrolled) but that is revoked now.
    hub.enrollment.revoke("pump-3")
    with Session(hub.engine) as session:
        store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
            device_id="pump-3", epoch="0123456789abcdef", seq=0, channels=["a"], ts=[1.0],
            values=[[1.0]])]))
    revoked = api.post("/rollouts", json={"model": {"name": name, "version": version},
                                          "target": {"devices": ["pump-3"]}})
    assert revoked.status_code == 422 and "not enrolled" in revoked.text, revoked.text
    job = api.post("/training-jobs", json={"name": "m", "devices": ["pump-3"]})
    if job.status_code < 400:
        job_id = job.json()["id"]
        done = wait_for(lambda: (j := api.get(f"/training-jobs/{job_id}").json())["status"]
                        not in ("queued", "running") and j, 30, "the job to end")
        assert done["status"] == "failed" and "not enrolled" in done["error"], done
    else:
        assert "not enrolled" in job.text, job.text


def test_revoke_disconnects_the_device_and_it_is_refused_from_then_on(
    broker: Broker, hub: Hub, server: ServerHandle, api: httpx.Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle: dict[str, Any] = api.post("/devices/pump-77/enroll").json()
    credential = Credential(bundle["username"], bundle["password"], bundle["username"])
    device = DeviceConnection(broker, credential)
    try:
        assert device.connack.get(timeout=10) == "Success"
        assert device.send(hub.topics.telemetry("pump-77"), _batch("pump-77", 0)) == "sent"
        wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] >= 1, 10, "stored")
        out = _cli(server, capsys, "devices", "revoke", "pump-77")
        assert "revoked pump-77" in out
        assert device.dropped.wait(10), "the broker did not disconnect the revoked device"
    finally:
        device.close()
    assert connack(broker, credential) == "Not authorized"
    listed = api.get("/enrollments", params={"revoked": True}).json()
    assert [e["device_id"] for e in listed] == ["pump-77"]
    # Enrolled again: a new credential works, the old one stays refused.
    renewed = api.post("/devices/pump-77/enroll").json()
    assert renewed["password"] != bundle["password"]
    assert connack(broker, Credential("pump-77", renewed["password"], "pump-77")) == "Success"


def test_enrolling_an_enrolled_device_is_a_conflict(api: httpx.Client) -> None:
    assert api.post("/devices/pump-88/enroll").status_code == 201
    again = api.post("/devices/pump-88/enroll")
    assert again.status_code == 409 and "revoke first" in again.text


def test_a_bulk_enrollment_naming_a_device_twice_is_refused_whole(api: httpx.Client) -> None:
    """Found by Schemathesis: the same id hundreds of times was a 500."""
    refused = api.post("/enrollments", json={"device_ids": ["pump-90", "pump-91"] + ["0"] * 300})
    assert refused.status_code == 422, refused.text
    problem = refused.json()["detail"][0]
    assert problem["loc"] == ["body", "device_ids"]
    assert "'0' listed more than once" in problem["msg"]
    listed = {e["device_id"] for e in api.get("/enrollments").json()}
    assert listed.isdisjoint({"0", "pump-90", "pump-91"}), listed


def test_a_source_toml_cannot_hold_is_refused_before_anything_is_enrolled(
    api: httpx.Client,
) -> None:
    """Found reading the code: a null in ``source`` was a 500 after the device was enrolled
    (so a retry got 409, and its bundle was lost)."""
    refused = api.post("/devices/pump-93/enroll",
                       json={"source": {"type": "csv", "options": {"path": None}}})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "source", "options"]
    assert "options.path is null" in refused.json()["detail"][0]["msg"]
    assert api.post("/devices/pump-93/enroll").status_code == 201, "nothing was left enrolled"


def test_a_bundle_is_valid_toml_whatever_the_strings_hold(api: httpx.Client) -> None:
    state_dir = 'state "\\ \t\x7f\x01 \U0001F600 é'
    options = {"path": "a\nb", "nested": {"k\"ey": ["\U0001F600", 1.5, True]}}
    made = api.post("/devices/pump-94/enroll",
                    json={"state_dir": state_dir, "source": {"type": "csv", "options": options}})
    assert made.status_code == 201, made.text
    written = tomllib.loads(made.json()["agent_toml"])
    assert written["state_dir"] == state_dir
    assert written["source"] == {"type": "csv", "options": options}


def test_a_device_credential_cannot_be_used_as_another_client_id(
    broker: Broker, api: httpx.Client
) -> None:
    bundle = api.post("/devices/pump-99/enroll").json()
    thief = broker.client(Credential("pump-99", bundle["password"], "pump-99"),
                          client_id="pump-1", protocol=mqtt.MQTTv5)
    answers: queue.Queue[str] = queue.Queue()
    thief.on_connect = lambda c, u, f, rc, p: answers.put(str(rc))
    thief.reconnect_delay_set(60, 60)
    thief.connect_async(broker.host, broker.port)
    thief.loop_start()
    try:
        assert answers.get(timeout=10) == "Not authorized"
    finally:
        thief.loop_stop()


def test_a_bulk_enrollment_job_from_the_cli_writes_every_bundle_and_hands_them_out_once(
    broker: Broker, server: ServerHandle, api: httpx.Client, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [f"line-{i:03d}" for i in range(60)]
    listing = tmp_path / "ids.txt"
    listing.write_text("# the press line\n" + "\n".join(ids) + "\n\n")
    out = _cli(server, capsys, "devices", "enroll", "--from", str(listing),
               "--out", str(tmp_path / "bundles"), "--json")
    written = json.loads(out)
    assert [w["device_id"] for w in written] == ids
    for device_id in ids:
        config = tomllib.loads((tmp_path / "bundles" / device_id / "agent.toml").read_text())
        assert config["device_id"] == device_id == config["mqtt"]["username"]
    enrolled = {e["device_id"]: e for e in api.get("/enrollments", params={"limit": 1000}).json()}
    assert all(enrolled[d]["broker_credential"] for d in ids)
    job = api.get(f"/enrollment-jobs/{written[0]['job']}").json()
    assert job["status"] == "succeeded" and job["stage"] == "done"
    assert job["devices_done"] == job["devices_total"] == 60
    assert job["bundles_collected"] and not job["bundles_ready"]
    again = api.post(f"/enrollment-jobs/{job['id']}/bundles", json={"collect_key": "x"})
    assert again.status_code == 409 and "collected already" in again.text
    # A written bundle's credential is the broker's: the device logs in with it.
    last = tomllib.loads((tmp_path / "bundles" / ids[-1] / "agent.toml").read_text())["mqtt"]
    assert connack(broker, Credential(last["username"], last["password"], ids[-1])) == "Success"


def test_an_enrollment_job_answers_at_once_and_refuses_up_front_what_would_fail(
    api: httpx.Client,
) -> None:
    started = api.post("/enrollment-jobs", json={"device_ids": ["job-1", "job-2"]})
    assert started.status_code == 202, started.text
    assert started.json()["devices_total"] == 2
    job_id = started.json()["id"]
    done = wait_for(lambda: (j := api.get(f"/enrollment-jobs/{job_id}").json())["status"]
                    != "running" and j, 30, "the job to finish")
    assert done["status"] == "succeeded", done
    key = started.json()["collect_key"]
    assert api.post(f"/enrollment-jobs/{job_id}/bundles").status_code == 422  # no key
    wrong = api.post(f"/enrollment-jobs/{job_id}/bundles",
                     json={"collect_key": Fernet.generate_key().decode()})
    assert wrong.status_code == 403 and "does not open" in wrong.text
    bundles = api.post(f"/enrollment-jobs/{job_id}/bundles", json={"collect_key": key}).json()
    assert sorted(b["device_id"] for b in bundles) == ["job-1", "job-2"]
    assert all(b["password"] for b in bundles)
    conflict = api.post("/enrollment-jobs", json={"device_ids": ["job-3", "job-2"]})
    assert conflict.status_code == 409 and "revoke first" in conflict.text
    assert api.get("/enrollment-jobs/nope").status_code == 404
    assert "job-3" not in {e["device_id"] for e in api.get("/enrollments").json()}


def test_enrollment_progress_counts_devices_with_a_credential_up_to_all_of_them(
    hub: Hub,
) -> None:
    heard: list[EnrollmentProgress] = []
    ids = [f"prog-{i:03d}" for i in range(60)]
    hub.enrollment.enroll(ids, progress=heard.append)
    credentials = [p.done for p in heard if p.stage == "credentials"]
    assert [p.stage for p in heard][0] == "clearing" and heard[-1].stage == "recording"
    assert credentials == sorted(credentials) and credentials[-1] == 60
    assert len(set(credentials)) > 2, "progress is told as the broker answers, not at the end"
    assert all(p.total == 60 for p in heard)


def test_a_revoke_the_broker_did_not_confirm_is_finished_by_revoking_again(
    broker: Broker, hub: Hub, api: httpx.Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle: dict[str, Any] = api.post("/devices/pump-78/enroll").json()
    credential = Credential(bundle["username"], bundle["password"], bundle["username"])
    admin = hub.enrollment._admin()

    def broker_away(*args: Any, **kwargs: Any) -> Any:
        raise TimeoutError("no answer from the broker's control topic")

    # without the hub's own retry (test_credential_audit.py), which would finish it first
    monkeypatch.setattr(hub.enrollment, "retry", None)
    with monkeypatch.context() as patch:
        patch.setattr(admin, "execute", broker_away)
        first = api.post("/devices/pump-78/revoke")
    assert first.status_code == 503 and "revoke it again to retry" in first.text, first.text
    # The registry says revoked, but the broker still takes the credential.
    assert connack(broker, credential) == "Success"

    again = api.post("/devices/pump-78/revoke")  # it used to answer 409 and leave it there
    assert again.status_code == 409, again.text
    assert "already revoked" in again.text and "credential is confirmed deleted" in again.text
    assert connack(broker, credential) == "Not authorized"
