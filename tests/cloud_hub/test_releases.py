"""Signed releases on the hub: only models that passed the gate are signed, every release takes
the next number of its name, a rollback is a new release, and keys rotate through signed trust
lists (REST + CLI), with private keys kept 0600 and out of the logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import Session, col, select

from cloud_hub.cli import main
from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.db.registry_tables import ModelRelease, ModelVersion
from cloud_hub.service import Hub
from shared.manifest import parse_manifest
from shared.signing import load_public_key, verify_manifest, verify_trust_list
from shared.trust import parse_trust_list
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import retained_under, tiny_artifact

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


def _retained(broker: Broker, hub: Hub, topic_filter: str) -> dict[str, bytes]:
    """Everything retained under ``topic_filter``, as a brand-new subscriber sees it."""
    marker = topic_filter.rstrip("#+/") + "/marker"  # not retained: comes after them all
    return {t: p for t, p in retained_under(broker, topic_filter, marker).items() if p}


def _manifest(broker: Broker, hub: Hub, name: str, version: int) -> dict[str, object]:
    retained = _retained(broker, hub, f"{hub.topics.model_prefix(name, version)}/#")
    return json.loads(retained[hub.topics.manifest(name, version)])  # type: ignore[no-any-return]


def _releases(hub: Hub, name: str) -> list[tuple[int, int, str]]:
    with Session(hub.engine) as session:
        rows = session.exec(select(ModelRelease).where(ModelRelease.name == name)
                            .order_by(col(ModelRelease.release))).all()
        return [(r.release, r.version, r.reason) for r in rows]


def test_a_draft_is_unsigned_and_one_that_failed_the_gate_is_never_signed(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    name, version = hub.register(tiny_artifact(agreement=0.9), name="pump-ae")
    with Session(hub.engine) as session:
        record = session.exec(select(ModelVersion)).one()
        assert record.key_id == "" and "signature" not in record.manifest
        assert "release" not in record.manifest
    refused = api.post(f"/models/{name}/{version}/publish", headers=ADMIN)
    assert refused.status_code == 409 and refused.json()["detail"]["figure"] == (
        "decision_agreement")
    for attempt in (api.post(f"/models/{name}/{version}/rollback", json={}, headers=ADMIN),
                    api.put("/devices/pump-1/desired", headers=ADMIN,
                            json={"model": {"name": name, "version": version}})):
        assert attempt.status_code == 409, attempt.text
    assert _releases(hub, name) == []
    assert _retained(broker, hub, f"{hub.topics.prefix}/models/#") == {}
    detail = api.get(f"/models/{name}/{version}", headers=ADMIN).json()
    assert detail["release"] is None and detail["key_id"] == ""


def test_each_release_takes_the_next_number_and_a_rollback_is_a_new_release(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    key = api.get("/signing-key").json()
    pinned = {key["key_id"]: load_public_key(key["public_key"])}
    for threshold in (0.5, 0.6):
        hub.register(tiny_artifact(threshold=threshold), name="pump-ae")
    for version in (1, 2):
        assert api.post(f"/models/pump-ae/{version}/publish", headers=ADMIN).status_code == 200
    old_v1 = _manifest(broker, hub, "pump-ae", 1)
    assert (old_v1["release"], _manifest(broker, hub, "pump-ae", 2)["release"]) == (1, 2)
    # publishing again is the same release, not a new one
    assert api.post("/models/pump-ae/2/publish", headers=ADMIN).json()["release"] == 2

    api.put("/devices/pump-1/desired", headers=ADMIN,
            json={"model": {"name": "pump-ae", "version": 2}})
    done = api.post("/models/pump-ae/1/rollback", json={}, headers=ADMIN)
    assert done.status_code == 200, done.text
    assert done.json() == {"name": "pump-ae", "version": 1, "release": 3, "devices": ["pump-1"]}
    rolled = parse_manifest(json.dumps(_manifest(broker, hub, "pump-ae", 1)))
    verify_manifest(rolled, pinned)
    assert rolled.release == 3 and rolled.sha256 == old_v1["sha256"]
    assert api.get("/devices/pump-1", headers=ADMIN).json()["desired_model"] == {
        "name": "pump-ae", "version": 1}

    # Setting desired back to v2 (not the newest release any more) releases it again.
    api.put("/devices/pump-1/desired", headers=ADMIN,
            json={"model": {"name": "pump-ae", "version": 2}})
    assert _manifest(broker, hub, "pump-ae", 2)["release"] == 4
    assert _releases(hub, "pump-ae") == [(1, 1, "publish"), (2, 2, "publish"),
                                         (3, 1, "rollback"), (4, 2, "desired")]
    listed = api.get("/models", headers=ADMIN).json()
    assert [(m["version"], m["release"]) for m in listed] == [(1, 3), (2, 4)]


def test_a_rollback_of_a_retired_version_publishes_it_again(
    broker: Broker, hub: Hub, api: httpx.Client
) -> None:
    hub.register(tiny_artifact(), name="pump-ae")
    api.post("/models/pump-ae/1/publish", headers=ADMIN)
    api.post("/models/pump-ae/1/retire", headers=ADMIN)
    assert _retained(broker, hub, f"{hub.topics.prefix}/models/#") == {}
    done = api.post("/models/pump-ae/1/rollback", json={"devices": ["pump-9"]}, headers=ADMIN)
    assert done.status_code == 200 and done.json()["release"] == 2
    assert api.get("/models/pump-ae/1", headers=ADMIN).json()["status"] == "published"
    assert _manifest(broker, hub, "pump-ae", 1)["release"] == 2


def test_rotate_then_retire_publishes_signed_trust_lists_and_moves_the_signing_key(
    broker: Broker,
    hub: Hub, api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first = api.get("/keys", headers=ADMIN).json()
    old = first["active"]
    assert first["trust_version"] == 0 and [k["status"] for k in first["keys"]] == ["active"]
    hub.register(tiny_artifact(), name="pump-ae")
    api.post("/models/pump-ae/1/publish", headers=ADMIN)
    old_public = {old: load_public_key(first["keys"][0]["public_key"]).public_bytes_raw()}

    rotated = api.post("/keys/rotate", json={"overlap_s": 3600}, headers=ADMIN)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["active"]
    assert new != old and rotated.json()["trust_version"] == 1
    assert api.get("/signing-key").json()["key_id"] == new
    key_files = sorted((hub.settings.data_dir / "keys").iterdir())
    assert [p.name for p in key_files] == [f"{new}.pem"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in key_files)

    lists = _retained(broker, hub, hub.topics.all_trust())
    v1 = parse_trust_list(lists[hub.topics.trust(1)])
    assert set(v1.keys) == {old, new} and {s.key_id for s in v1.signatures} == {old, new}
    verify_trust_list(v1, old_public)  # a device that trusts only the old key accepts it

    hub.register(tiny_artifact(threshold=0.7), name="pump-ae")
    api.post("/models/pump-ae/2/publish", headers=ADMIN)
    assert _manifest(broker, hub, "pump-ae", 2)["key_id"] == new, "new releases: the new key"
    assert _manifest(broker, hub, "pump-ae", 1)["key_id"] == old, "still trusted in the overlap"

    early = api.post(f"/keys/{old}/retire", json={}, headers=ADMIN)
    assert early.status_code == 409 and "overlap" in early.json()["detail"]
    assert api.post(f"/keys/{new}/retire", json={"force": True},
                    headers=ADMIN).status_code == 409, "the active key cannot be retired"
    retired = api.post(f"/keys/{old}/retire", json={"force": True}, headers=ADMIN)
    assert retired.status_code == 200, retired.text
    body = retired.json()
    assert body["trust_version"] == 2 and body["resigned"] == ["pump-ae:1"]
    assert {k["key_id"]: k["status"] for k in body["keys"]} == {old: "retired", new: "active"}
    v2 = parse_trust_list(_retained(broker, hub, hub.topics.all_trust())[hub.topics.trust(2)])
    assert set(v2.keys) == {new} and [s.key_id for s in v2.signatures] == [new]
    verify_trust_list(v2, v1.public_keys())
    resigned = _manifest(broker, hub, "pump-ae", 1)
    assert (resigned["key_id"], resigned["release"]) == (new, 1), "same release, new key"
    assert not hub.settings.resolved_signing_key_path.exists(), "a retired key's file is gone"
    assert "PRIVATE KEY" not in caplog.text


def test_unknown_keys_models_and_rollouts_are_404(api: httpx.Client) -> None:
    assert api.post("/keys/0123456789abcdef/retire", json={}, headers=ADMIN).status_code == 404
    assert api.post("/models/pump-ae/1/rollback", json={}, headers=ADMIN).status_code == 404
    assert api.post("/rollouts/1/rollback", headers=ADMIN).status_code == 404
    assert api.post("/keys/not-a-key-id/retire", json={}, headers=ADMIN).status_code == 422


def test_keys_from_the_cli(hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    server = serve_in_thread(hub)
    try:
        def run(*args: str) -> tuple[int, str]:
            code = main(["--url", server.base_url, "--api-key", ADMIN_KEY, *args])
            return code, capsys.readouterr().out

        code, out = run("--json", "keys", "list")
        old = json.loads(out)["active"]
        assert code == 0
        code, out = run("--json", "keys", "rotate", "--overlap", "0")
        assert code == 0 and json.loads(out)["trust_version"] == 1
        code, out = run("keys", "retire", old)
        assert code == 0 and "retired" in out and "trust lists (latest v2)" in out
    finally:
        server.stop()
