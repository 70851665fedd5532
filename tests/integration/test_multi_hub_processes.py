"""Two ``cloud-hub serve`` processes on one PostgreSQL database, splitting the agents' streams
with ``$share``, store every reading exactly once, also across a broker restart (mosquitto does
not restore shared subscriptions, so the agents' resend covers the gap) and a hub killed with
SIGKILL mid-stream (what it had not committed is delivered again, to it once it is back or to
the agents' resend). Scraped one by one, as Prometheus would, their metrics add up to what the
database holds, and each job lease has one holder. An admin whose every request a balancer
sends to the other process from the one before sees one hub.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cloud_hub.cli.client import ApiError, HubClient
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from tests.integration.support import (
    LONG_TRAINING,
    assert_stored_once,
    start_training,
    stored_readings,
    wait_for,
)
from tests.pg import pg_database

pytestmark = [pytest.mark.integration, pytest.mark.hub, pytest.mark.postgres]
__all__ = ["pg_database"]


@pytest.fixture
def hubs(broker: Broker, pg_database: str, tmp_path: Path) -> Iterator[list[HubProcess]]:
    key = "multi-hub-admin-key-0123456789"
    volume = tmp_path / "key-volume"
    procs = [HubProcess(tmp_path / f"hub-{i}", mqtt_port=broker.port, admin_api_key=key,
                        extra_env={**broker.hub_env(f"hub-{i}"),
                                   "EDGELOOP_DATABASE_URL": pg_database,
                                   "EDGELOOP_MQTT_SHARE_GROUP": "hubs",
                                   "EDGELOOP_HUB_REPORT_S": "1",
                                   # one key volume (docs/scaling.md, step 3)
                                   "EDGELOOP_SIGNING_KEY_PATH": str(volume / "signing-key.pem"),
                                   "EDGELOOP_SIGNING_KEYS_DIR": str(volume / "keys")})
             for i in range(2)]
    try:
        for p in procs:  # both at once, as a fleet's hubs come up (migrations take turns)
            p.launch()
        for p in procs:
            p.wait_healthy(120)
        yield procs
    finally:
        for p in procs:
            p.stop()


def _started_agents(broker: Broker, client: HubClient, tmp_path: Path, n: int) -> Fleet:
    """``n`` real agents, enrolled through the hub, streaming at 20 Hz each."""
    agents = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
                   mqtt_auth=hub_enrollment(client, tmp_path / "bundles"),
                   state_root=tmp_path / "agents", trust_keys={})
    for i in range(n):
        agents.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", seed=i, rate_hz=20.0))
    agents.start()
    return agents


def test_two_hubs_store_each_reading_once_across_a_broker_restart_and_a_hub_killed(
    broker: Broker, hubs: list[HubProcess], pg_database: str, tmp_path: Path,
) -> None:
    client = HubClient(hubs[0].url, hubs[0].admin_api_key)
    agents = _started_agents(broker, client, tmp_path, 4)
    try:
        wait_for(lambda: all(stored_readings(client).get(d, 0) > 40 for d in agents.devices), 60,
                 "first telemetry through both hubs")
        broker.stop()
        wait_for(lambda: all(s["outbox_depth"] >= 2 for s in agents.statuses().values()), 30,
                 "agents buffering while the broker is down")
        broker.start()
        mark = stored_readings(client)
        wait_for(lambda: all(stored_readings(client)[d] > mark[d] + 40 for d in agents.devices), 90,
                 "telemetry flowing again after the broker restart")
        pid = hubs[1].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # mid-stream, with messages in flight to it
        mark = stored_readings(client)
        wait_for(lambda: all(stored_readings(client)[d] > mark[d] + 40 for d in agents.devices), 90,
                 "the other hub storing everything alone")
        # Any process lists the killed one as silent once it misses three reports.
        wait_for(lambda: _state_of(client, pid) == "silent", 30,
                 "the killed hub listed as silent")
        hubs[1].stop()  # reap it
        hubs[1].start(timeout=120)
        restarted = hubs[1].pid
        assert restarted is not None
        wait_for(lambda: _state_of(client, restarted) == "running", 30,
                 "the restarted hub listed as running")
        time.sleep(1.0)
    finally:
        agents.stop()
    assert_stored_once(client, agents.samples_generated(), pg_database)
    client.close()


def _state_of(client: HubClient, pid: int) -> str | None:
    """The state ``GET /hubs`` gives the process ``pid`` (on this machine), if listed."""
    states = [h["state"] for h in client.get("/hubs") if h["pid"] == pid]
    return states[0] if states else None


def _scrape(hub: HubProcess) -> dict[str, list[Sample]]:
    """One hub's metrics as Prometheus reads them (its own address: each process counts
    for itself), with the admin key as a bearer token."""
    response = httpx.get(f"{hub.url}/api/v1/metrics", params={"format": "prometheus"},
                         headers={"Authorization": f"Bearer {hub.admin_api_key}"}, timeout=30)
    assert response.status_code == 200, response.text
    return {f.name: list(f.samples) for f in text_string_to_metric_families(response.text)}


def _total(families: dict[str, list[Sample]], counter: str) -> float:
    (sample,) = [s for s in families[f"edgeloop_hub_{counter}"]
                 if s.name == f"edgeloop_hub_{counter}_total"]
    return sample.value


def _leases(families: dict[str, list[Sample]]) -> dict[str, float]:
    return {s.labels["lease"]: s.value for s in families["edgeloop_hub_lease_held"]}


def test_each_hubs_metrics_count_its_own_share_and_each_lease_has_one_holder(
    broker: Broker, hubs: list[HubProcess], pg_database: str, tmp_path: Path,
) -> None:
    client = HubClient(hubs[0].url, hubs[0].admin_api_key)
    agents = _started_agents(broker, client, tmp_path, 3)
    try:
        wait_for(lambda: all(_total(_scrape(h), "telemetry_readings_stored") > 0 for h in hubs),
                 60, "both hubs storing their share of the streams")
    finally:
        agents.stop()
    assert_stored_once(client, agents.samples_generated(), pg_database)
    scraped = [_scrape(h) for h in hubs]
    # Nothing restarted: the hubs' own counts add up to what the database holds.
    assert sum(_total(f, "telemetry_readings_stored") for f in scraped) == \
        sum(agents.samples_generated().values())
    # The broker answered every PINGREQ in time (a late answer is counted, and kept).
    assert [_total(f, "mqtt_late_pingresps") for f in scraped] == [0, 0]
    identities = [f["edgeloop_hub_info"][0].labels for f in scraped]
    assert len({i["client_id"] for i in identities}) == 2
    assert len({i["lease_holder"] for i in identities}) == 2

    def one_holder_each() -> dict[str, float] | None:
        held = [_leases(_scrape(h)) for h in hubs]
        assert set(held[0]) == set(held[1])
        sums = {lease: held[0][lease] + held[1][lease] for lease in held[0]}
        return sums if all(n == 1 for n in sums.values()) else None

    sums = wait_for(one_holder_each, 60, "every job lease held by exactly one of the two hubs")
    assert {"rollouts", "maintenance", "training", "retained-desired"} <= set(sums)
    # Whichever process answers lists both, with the same split of the leases.
    listed = client.get("/hubs")
    assert {h["client_id"] for h in listed} == {i["client_id"] for i in identities}
    assert all(h["state"] == "running" for h in listed)
    leases = [lease for h in listed for lease in h["leases"]]
    assert sorted(leases) == sorted(sums)
    client.close()
    # Started together on one key volume, they made one signing key, and each can sign with it;
    # a key one of them rotates to signs on the other, which has not restarted.
    assert [_keys(hub) for hub in hubs] == [[("active", True)]] * 2
    rotated = _ask(hubs[0], "POST", "/keys/rotate", json={"overlap_s": 3600})
    assert [_keys(hub) for hub in hubs] == [[("trusted", True), ("active", True)]] * 2
    assert _ask(hubs[1], "GET", "/keys")["active"] == rotated["active"]
    for hub in hubs:
        assert "no private key on this hub" not in hub.log_path.read_text()

    # A bulk enrollment started through one process is followed and collected through the
    # other, as a balancer would send the requests.
    started = _ask(hubs[0], "POST", "/enrollment-jobs", json={"device_ids": ["lb-1", "lb-2"]})
    done = wait_for(lambda: (j := _ask(hubs[1], "GET", f"/enrollment-jobs/{started['id']}"))
                    ["status"] != "running" and j, 60, "the enrollment job, seen from hub-1")
    assert done["status"] == "succeeded", done
    bundles = _ask(hubs[1], "POST", f"/enrollment-jobs/{started['id']}/bundles",
                   json={"collect_key": started["collect_key"]})
    assert sorted(b["device_id"] for b in bundles) == ["lb-1", "lb-2"]
    assert all(b["password"] for b in bundles)


def _ask(hub: HubProcess, method: str, path: str, **kwargs: Any) -> Any:
    """One request to this process, not to whichever a balancer picks."""
    client = HubClient(hub.url, hub.admin_api_key)
    try:
        return client.request(method, path, **kwargs)
    finally:
        client.close()


def _keys(hub: HubProcess) -> list[tuple[str, bool]]:
    """(status, private key on this process) of each signing key, oldest first."""
    keys = _ask(hub, "GET", "/keys")["keys"]
    return [(k["status"], k["private_key_here"]) for k in keys]


class _RoundRobin(httpx.BaseTransport):
    """A balancer in front of the hub processes: each request goes to the next in turn, so
    two requests in a row never reach the same process. ``served`` names each one's process."""

    def __init__(self, hubs: list[HubProcess]) -> None:
        self._targets = [httpx.URL(h.url) for h in hubs]
        self._inner = httpx.HTTPTransport()
        self.served: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        i = len(self.served) % len(self._targets)
        self.served.append(i)
        target = self._targets[i]
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def test_an_admin_behind_a_round_robin_balancer_sees_one_hub(hubs: list[HubProcess]) -> None:
    """Every step an admin takes through a balancer, with each request on the other process
    from the one before: what one process did, the next one knows. Keys, devices, webhooks,
    retrain policies, a training job cancelled through the process not running it, and a
    console session started on one process and ended on the other."""
    balancer = _RoundRobin(hubs)
    admin = HubClient(hubs[0].url, hubs[0].admin_api_key, transport=balancer)
    try:
        # An API key made through one process works, and is revoked, on the other.
        made = admin.post("/api-keys", {"name": "rr-reader", "scope": "read"})
        reader = HubClient(hubs[0].url, made["key"], transport=balancer)
        try:
            assert [reader.get("/devices") for _ in range(2)] == [[], []]
            admin.request("DELETE", f"/api-keys/{made['id']}")
            for _ in range(2):
                with pytest.raises(ApiError) as refused:
                    reader.get("/devices")
                assert refused.value.status == 401
        finally:
            reader.close()

        # A device: enrolled, changed, read and revoked, a process at a time.
        bundle = admin.post("/devices/rr-1/enroll")
        assert bundle["device_id"] == "rr-1" and bundle["password"]
        assert admin.get("/devices/rr-1")["device_id"] == "rr-1"
        admin.request("PATCH", "/devices/rr-1", json={"group": "plant-rr", "tags": ["rr"]})
        seen = admin.get("/devices/rr-1")
        assert (seen["group"], seen["tags"]) == ("plant-rr", ["rr"])
        admin.post("/devices/rr-1/revoke")
        enrollments = {e["device_id"]: e for e in admin.get_all("/enrollments")}
        assert enrollments["rr-1"]["revoked_at"] is not None

        # A webhook rule: made, switched off, listed and deleted.
        rule = admin.post("/webhooks", {"name": "rr", "url": "https://alerts.example.com/rr"})
        admin.request("PATCH", f"/webhooks/{rule['id']}", json={"enabled": False})
        assert [(r["id"], r["enabled"]) for r in admin.get_all("/webhooks")] == \
            [(rule["id"], False)]
        admin.request("DELETE", f"/webhooks/{rule['id']}")
        assert admin.get_all("/webhooks") == []

        # A retrain policy: set, read, dropped.
        admin.request("PUT", "/retrain-policies/plant-rr", json={"drift_hold_s": 60})
        assert [p["group"] for p in admin.get_all("/retrain-policies")] == ["plant-rr"]
        admin.request("DELETE", "/retrain-policies/plant-rr")
        assert admin.get_all("/retrain-policies") == []

        # A training job taken through one process runs where the training lease is, and a
        # cancel sent to the other process stops it.
        job_id = start_training(admin, "rr-ae", LONG_TRAINING)
        wait_for(lambda: admin.get(f"/training-jobs/{job_id}")["status"] == "running",
                 120, "the training job running")
        runner = wait_for(lambda: next((h["pid"] for h in admin.get("/hubs")
                                        if "training" in h["leases"]), None),
                          60, "the process holding the training lease")
        (other,) = [h for h in hubs if h.pid != runner]
        _ask(other, "POST", f"/training-jobs/{job_id}/cancel")
        ended = wait_for(lambda: (j := admin.get(f"/training-jobs/{job_id}"))["status"]
                         not in ("queued", "running") and j, 120, "the training job cancelled")
        assert ended["status"] == "cancelled", ended
    finally:
        admin.close()

    # The console: a session started on one process is the other's too, and ends on both.
    console = httpx.Client(base_url=hubs[0].url, transport=_RoundRobin(hubs), timeout=30,
                           headers={"Accept": "text/html"})  # as a browser navigates
    try:
        page = console.get("/ui/login")
        token = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
        assert token is not None
        answer = console.post("/ui/login", data={"login_csrf": token.group(1),
                                                 "api_key": hubs[0].admin_api_key})
        assert answer.status_code == 303, answer.text
        fleets = [console.get("/ui/fleet") for _ in range(2)]
        assert [f.status_code for f in fleets] == [200, 200]
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', fleets[1].text)
        assert csrf is not None
        assert console.post("/ui/logout", data={"csrf_token": csrf.group(1)}).status_code == 303
        for _ in range(2):
            gone = console.get("/ui/fleet")
            assert gone.status_code == 303 and "/ui/login" in gone.headers["location"]
    finally:
        console.close()
    assert set(balancer.served) == {0, 1}
