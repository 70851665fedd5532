"""Staged rollouts against real mosquitto + stand-in devices: promote, roll back, pause."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.db.registry_tables import Rollout, RolloutDevice
from cloud_hub.rollouts.planning import unknown_devices
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget
from cloud_hub.service import Hub
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.fleet import FakeDevice
from tests.cloud_hub.helpers import tiny_artifact, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]
ADMIN = {"X-API-Key": ADMIN_KEY}
DEVICES = [f"pump-{i}" for i in range(5)]


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url + "/api/v1", timeout=30) as client:
            yield client
    finally:
        server.stop()


def _fleet(broker: Broker, hub: Hub, **kwargs: Any) -> list[FakeDevice]:
    fleet = [FakeDevice(d, broker, hub.topics, hub.signing_key.key_id,
                        hub.signing_key.public_b64(), **kwargs) for d in DEVICES]

    def known() -> bool:  # a rollout targets devices the hub has heard of
        with Session(hub.engine) as session:
            return not unknown_devices(session, DEVICES)

    wait_for(known, timeout=20, what="the hub to know every device")
    return fleet


def _published(hub: Hub, api: httpx.Client, **kwargs: Any) -> tuple[str, int]:
    name, version = hub.register(tiny_artifact(**kwargs), name="pump-ae")
    assert api.post(f"/models/{name}/{version}/publish", headers=ADMIN).status_code == 200
    return name, version


def _rollout(api: httpx.Client, version: int, **policy: Any) -> dict[str, Any]:
    body = {"model": {"name": "pump-ae", "version": version}, "target": {"devices": DEVICES},
            "policy": {"canary_size": 2, "wave_size": 2, "min_observation_s": 0.5, **policy}}
    response = api.post("/rollouts", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _done(api: httpx.Client, rollout_id: int) -> dict[str, Any] | None:
    view: dict[str, Any] = api.get(f"/rollouts/{rollout_id}", headers=ADMIN).json()
    return view if view["status"] in ("succeeded", "rolled_back", "aborted") else None


def test_good_model_is_promoted_through_every_wave(
    broker: Broker, hub: Hub, api: httpx.Client
) -> None:
    fleet = _fleet(broker, hub)
    try:
        _, version = _published(hub, api)
        created = _rollout(api, version)
        assert created["stage_sizes"] == [2, 2, 1]
        view = wait_for(lambda: _done(api, created["id"]), timeout=30, what="rollout end")
    finally:
        for device in fleet:
            device.close()
    assert view["status"] == "succeeded", view["reason"]
    assert view["devices_updated"] == len(DEVICES)
    assert view["seconds_to_full"] > 0
    assert all(d["confirmed_at"] is not None and d["failure"] is None for d in view["devices"])
    assert all(d["reported"] == {"name": "pump-ae", "version": version}
               for d in view["devices"])
    running = api.get(f"/models/pump-ae/{version}", headers=ADMIN).json()["devices"]
    assert running == sorted(DEVICES)


def test_noisy_canary_is_rolled_back_on_every_touched_device(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    _, good = _published(hub, api)
    _, bad = _published(hub, api, threshold=0.0001)
    fleet = _fleet(broker, hub, noisy_versions={bad}, noise_interval_s=0.05)
    try:
        first = _rollout(api, good)
        assert wait_for(lambda: _done(api, first["id"]), timeout=30)["status"] == "succeeded"
        second = _rollout(api, bad, min_observation_s=3, max_anomaly_rate_increase=5)
        view = wait_for(lambda: _done(api, second["id"]), timeout=30, what="rollback")
    finally:
        for device in fleet:
            device.close()
    assert view["status"] == "rolled_back"
    assert "anomaly rate" in view["reason"]
    touched = [d for d in view["devices"] if d["reverted_at"] is not None]
    assert [d["stage"] for d in touched] == [0, 0]  # only the canary got the bad model
    for d in view["devices"]:
        assert d["reported"] == {"name": "pump-ae", "version": good}
        assert d["desired"] == {"name": "pump-ae", "version": good}
    # Devices are only sent to the newest release of a name: publish good (1) and bad (2),
    # roll out good (released again: 3), roll out bad (4), roll back to good (5).
    releases = {m["version"]: m["release"] for m in api.get("/models", headers=ADMIN).json()}
    assert releases == {good: 5, bad: 4}


def test_install_failures_breach_the_failure_ratio(
    broker: Broker, hub: Hub, api: httpx.Client
) -> None:
    _, good = _published(hub, api)
    _, broken = _published(hub, api)
    fleet = _fleet(broker, hub, fail_versions={broken})
    try:
        first = _rollout(api, good)
        assert wait_for(lambda: _done(api, first["id"]), timeout=30)["status"] == "succeeded"
        second = _rollout(api, broken, max_failure_ratio=0.0)
        view = wait_for(lambda: _done(api, second["id"]), timeout=30, what="rollback")
    finally:
        for device in fleet:
            device.close()
    assert view["status"] == "rolled_back"
    assert "install failure ratio" in view["reason"] and "cannot load" in view["reason"]
    # the controller's marks are stored on the stage's rows, not only judged
    assert view["devices_failed"] >= 1
    failed = [d for d in view["devices"] if d["failure"] is not None]
    assert failed and all("cannot load" in d["failure"] and d["confirmed_at"] is None
                          for d in failed)


def test_pause_holds_the_next_stage_and_resume_continues(
    broker: Broker, hub: Hub, api: httpx.Client
) -> None:
    fleet = _fleet(broker, hub)
    try:
        _, version = _published(hub, api)
        created = _rollout(api, version, min_observation_s=1.0)
        paused = api.post(f"/rollouts/{created['id']}/pause", headers=ADMIN).json()
        assert paused["status"] == "paused"
        assert api.post(f"/rollouts/{created['id']}/pause", headers=ADMIN).status_code == 409
        view = api.get(f"/rollouts/{created['id']}", headers=ADMIN).json()
        assert view["stage"] == 0
        assert api.post(f"/rollouts/{created['id']}/resume", headers=ADMIN).status_code == 200
        view = wait_for(lambda: _done(api, created["id"]), timeout=30, what="rollout end")
        assert view["status"] == "succeeded"
    finally:
        for device in fleet:
            device.close()


def test_rollout_of_a_draft_is_refused(hub: Hub, api: httpx.Client) -> None:
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    body = {"model": {"name": name, "version": version}, "target": {"devices": ["x"]}}
    response = api.post("/rollouts", json=body, headers=ADMIN)
    assert response.status_code == 409
    assert "publish it first" in response.json()["detail"]
    bad = api.post("/rollouts", json={**body, "target": {"percent": 0}}, headers=ADMIN)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "target", "percent"]


def test_target_by_group_tags_and_percent_then_abort(hub: Hub, api: httpx.Client) -> None:
    for i, device in enumerate(DEVICES[:4]):
        body = {"group": "plant-a", "tags": ["line-2"] if i % 2 else ["line-1"]}
        assert api.put(f"/devices/{device}/desired", json={"model": None},
                       headers=ADMIN).status_code == 200
        assert api.patch(f"/devices/{device}", json=body, headers=ADMIN).status_code == 200
    _, version = _published(hub, api)
    body: dict[str, Any] = {"model": {"name": "pump-ae", "version": version},
                            "target": {"group": "plant-a", "tags": ["line-2"]},
                            "policy": {"min_observation_s": 60}}
    created = api.post("/rollouts", json=body, headers=ADMIN).json()
    assert sorted(d["device_id"] for d in created["devices"]) == [DEVICES[1], DEVICES[3]]
    busy = api.post("/rollouts", json=body, headers=ADMIN)
    assert busy.status_code == 409 and "active rollout" in busy.json()["detail"]
    aborted = api.post(f"/rollouts/{created['id']}/abort", headers=ADMIN).json()
    assert aborted["status"] == "aborted"

    half = api.post("/rollouts", json={**body, "target": {"group": "plant-a", "percent": 50}},
                    headers=ADMIN).json()
    assert half["devices_total"] == 2
    listed = api.get("/rollouts", headers=ADMIN).json()
    assert [r["id"] for r in listed] == [half["id"], created["id"]]
    nobody = api.post("/rollouts", json={**body, "target": {"group": "plant-z"}},
                      headers=ADMIN)
    assert nobody.status_code == 422 and "selects no device" in nobody.text


def test_an_admin_rolls_back_a_finished_rollout_to_the_previous_model(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    fleet = _fleet(broker, hub)
    try:
        _, first = _published(hub, api)
        _, second = _published(hub, api)
        initial = _rollout(api, first)
        done = wait_for(lambda: _done(api, initial["id"]), timeout=30, what="the first rollout")
        assert done["status"] == "succeeded"
        created = _rollout(api, second)
        assert wait_for(lambda: _done(api, created["id"]), timeout=30,
                        what="the second rollout")["status"] == "succeeded"
        viewer = api.post("/api-keys", json={"name": "ro", "scope": "read"}, headers=ADMIN)
        refused = api.post(f"/rollouts/{created['id']}/rollback",
                           headers={"X-API-Key": viewer.json()["key"]})
        assert refused.status_code == 403
        response = api.post(f"/rollouts/{created['id']}/rollback", headers=ADMIN)
        assert response.status_code == 200, response.text
        assert response.json()["reason"] == "rolled back by bootstrap-admin"
        view = wait_for(lambda: _done(api, created["id"]), timeout=30, what="the rollback")
        again = api.post(f"/rollouts/{created['id']}/rollback", headers=ADMIN)
    finally:
        for device in fleet:
            device.close()
    assert view["status"] == "rolled_back"
    assert all(d["reported"] == {"name": "pump-ae", "version": first} for d in view["devices"])
    assert again.status_code == 409 and "rolled_back; cannot roll back" in again.json()["detail"]
    # Back as a new signed release: 1, 2 published; the first rollout releases v1 again (3),
    # the second v2 (4), the rollback v1 (5). Devices refuse an older release than they run.
    assert api.get(f"/models/pump-ae/{first}", headers=ADMIN).json()["release"] == 5


def test_rollout_naming_a_malformed_or_unknown_device_is_422_naming_it(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    fleet = _fleet(broker, hub)
    try:
        _, version = _published(hub, api)
        body = {"model": {"name": "pump-ae", "version": version},
                "target": {"devices": [DEVICES[0], "bad/id#", DEVICES[1]]}}
        response = api.post("/rollouts", json=body, headers=ADMIN)
        assert response.status_code == 422
        error = response.json()["detail"][0]
        assert error["loc"] == ["body", "target", "devices", 1]
        assert error["input"] == "bad/id#"
        body["target"] = {"devices": [DEVICES[0], "pump-never-seen"]}
        response = api.post("/rollouts", json=body, headers=ADMIN)
        assert response.status_code == 422
        error = response.json()["detail"][0]
        assert error["loc"] == ["body", "target", "devices", 1]
        assert "'pump-never-seen' is not known" in error["msg"]
        assert api.get("/rollouts", headers=ADMIN).json() == []
    finally:
        for device in fleet:
            device.close()


def test_a_rollout_with_a_bad_stored_target_never_stops_the_others(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    fleet = _fleet(broker, hub)
    try:
        name, version = _published(hub, api)
        with Session(hub.engine) as session:  # behind the API's back: an id no topic can hold
            bad = Rollout(model_name=name, model_version=version, target=RolloutTarget(),
                          policy=RolloutPolicy(min_observation_s=0.5), stages=[["bad/id#"]],
                          created_at=0.0)
            session.add(bad)
            session.flush()
            assert bad.id is not None
            session.add(RolloutDevice(rollout_id=bad.id, device_id="bad/id#", stage=0))
            session.commit()
            bad_id = bad.id
        good = _rollout(api, version)
        view = wait_for(lambda: _done(api, good["id"]), timeout=30, what="good rollout end")
        assert view["status"] == "succeeded", view["reason"]
        broken = wait_for(lambda: _done(api, bad_id), timeout=30, what="bad rollout aborted")
        assert broken["status"] == "aborted"
        assert "bad/id#" in broken["reason"] and "failed steps" in broken["reason"]
    finally:
        for device in fleet:
            device.close()
