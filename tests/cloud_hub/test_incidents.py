"""Incidents on a real hub: anomaly events over MQTT grouped while they keep coming, resolved
when quiet, acknowledged and resolved through the API (with who and a note), and shown by the
CLI one line per event or incident."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from cloud_hub.cli import main
from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.service import Hub
from shared.messages import AnomalyEvent, ModelRef, encode
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY, started_hub
from tests.cloud_hub.helpers import (
    publish_wait,
    publisher_client,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.hub]
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def incident_quiet_s() -> float:
    return 1.5  # a test that must not race the quiet period parametrizes a longer one


@pytest.fixture
def quick_hub(broker: Broker, tmp_path: Path, incident_quiet_s: float) -> Iterator[Hub]:
    """A hub whose incidents close after ``incident_quiet_s`` of quiet."""
    with started_hub(broker, tmp_path / "hub", incident_gap_s=5.0,
                     incident_quiet_s=incident_quiet_s, incident_tick_s=0.1) as h:
        yield h


@pytest.fixture
def server(quick_hub: Hub) -> Iterator[ServerHandle]:
    handle = serve_in_thread(quick_hub)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def api(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url + "/api/v1", headers=ADMIN, timeout=30) as c:
        yield c


@pytest.fixture
def device(broker: Broker, quick_hub: Hub) -> Iterator[mqtt.Client]:
    client = publisher_client(broker)
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def send_event(client: mqtt.Client, hub: Hub, device_id: str, seq: int, t: float,
               score: float, channels: list[str]) -> None:
    event = AnomalyEvent(
            epoch="0123456789abcdef", device_id=device_id, seq=seq, ts=(t, t + 1.0), score=score,
                         threshold=1.0, model=ModelRef(name="pump-ae", version=1),
                         channels=channels, detected_at=t + 1.0)
    publish_wait(client, hub.topics.anomalies(device_id), encode(event))


def _incidents(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/incidents", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


@pytest.mark.parametrize("incident_quiet_s", [3600.0])
def test_a_burst_of_events_is_one_incident_that_resolves_itself_when_quiet(
    quick_hub: Hub, api: httpx.Client, device: mqtt.Client
) -> None:
    """The quiet period is made short (1.5 s) only once the five events are grouped: it runs
    from when the hub stored an incident's last event, and on a loaded machine (a full suite on
    three workers) two of the five were stored more than 1.5 s apart, which rightly split them
    into two incidents."""
    t0 = time.time() - 30
    scores = [1.5, 3.0, 7.5, 2.0, 1.2]
    for seq, score in enumerate(scores):
        send_event(device, quick_hub, "pump-1", seq, t0 + seq * 2.0, score,
                   ["pressure", "flow"] if seq % 2 else ["pressure"])
    incident = wait_for(lambda: [i for i in _incidents(api) if i["events"] == 5],
                        what="one incident with all five events")[0]
    assert len(_incidents(api)) == 1
    assert incident["device_id"] == "pump-1" and incident["state"] == "open"
    assert incident["peak_score"] == 7.5 and incident["threshold"] == 1.0
    assert incident["channels"] == ["pressure", "flow"]  # most frequent first
    assert incident["started_at"] == pytest.approx(t0) and incident["ended_at"] == pytest.approx(
        t0 + 9.0)
    assert "fault_class" not in incident and "rul_s" not in incident  # absent until they exist

    tick = quick_hub.incident_tick
    tick.policy = dataclasses.replace(tick.policy, quiet_s=1.5)
    resolved = wait_for(lambda: _incidents(api, state="resolved"), timeout=15,
                        what="the quiet incident to resolve itself")[0]
    assert resolved["id"] == incident["id"] and resolved["events"] == 5
    assert resolved["resolved_by"] == "auto" and "no anomaly for 1.5 s" in resolved["resolve_note"]

    # After it closed, a new event (even close in time) opens a new incident.
    send_event(device, quick_hub, "pump-1", 10, t0 + 12.0, 2.5, ["temperature"])
    fresh = wait_for(lambda: [i for i in _incidents(api) if i["id"] != incident["id"]],
                     what="a second incident")[0]  # open, or already quiet for 1.5 s
    assert fresh["id"] != incident["id"] and fresh["events"] == 1
    detail = api.get(f"/incidents/{fresh['id']}").json()
    assert [e["seq"] for e in detail["event_list"]] == [10]
    assert detail["event_list"][0]["incident_id"] == fresh["id"]


def test_events_far_apart_or_on_other_devices_are_separate_incidents(
    quick_hub: Hub, api: httpx.Client, device: mqtt.Client
) -> None:
    t0 = time.time()
    send_event(device, quick_hub, "pump-1", 1, t0, 2.0, ["a"])
    send_event(device, quick_hub, "pump-1", 2, t0 + 100.0, 2.0, ["a"])  # beyond the 5 s gap
    send_event(device, quick_hub, "pump-2", 1, t0, 2.0, ["a"])
    rows = wait_for(lambda: len(_incidents(api)) == 3 and _incidents(api),
                    what="three incidents")
    assert sorted((r["device_id"], r["events"]) for r in rows) == [
        ("pump-1", 1), ("pump-1", 1), ("pump-2", 1)]
    page = api.get("/incidents", params={"limit": 2})
    newest_first = sorted((r["id"] for r in rows), reverse=True)
    assert [r["id"] for r in page.json()] == newest_first[:2]
    rest = api.get("/incidents", params={"limit": 2, "cursor": page.headers["X-Next-Cursor"]})
    assert [r["id"] for r in rest.json()] == newest_first[2:]
    assert "X-Next-Cursor" not in rest.headers
    assert len(_incidents(api, device_id="pump-2")) == 1


@pytest.mark.parametrize("incident_quiet_s", [3600.0])
def test_acknowledge_and_resolve_record_who_and_the_note_and_need_admin(
    quick_hub: Hub, api: httpx.Client, device: mqtt.Client
) -> None:
    send_event(device, quick_hub, "pump-1", 1, time.time(), 4.0, ["a"])
    incident = wait_for(lambda: _incidents(api), what="an incident")[0]
    viewer = api.post("/api-keys", json={"name": "night-shift", "scope": "read"}).json()["key"]
    refused = api.post(f"/incidents/{incident['id']}/acknowledge", json={"note": "x"},
                       headers={"X-API-Key": viewer})
    assert refused.status_code == 403

    acked = api.post(f"/incidents/{incident['id']}/acknowledge",
                     json={"note": "looking at valve 3"})
    assert acked.status_code == 200, acked.text
    body = acked.json()
    assert body["state"] == "acknowledged" and body["acknowledged_by"] == "bootstrap-admin"
    assert body["ack_note"] == "looking at valve 3"
    again = api.post(f"/incidents/{incident['id']}/acknowledge", json={})
    assert again.status_code == 409 and "only an open incident" in again.json()["detail"]

    done = api.post(f"/incidents/{incident['id']}/resolve", json={"note": "valve replaced"})
    assert done.status_code == 200
    assert done.json()["resolved_by"] == "bootstrap-admin"
    assert done.json()["resolve_note"] == "valve replaced"
    assert api.post(f"/incidents/{incident['id']}/resolve", json={}).status_code == 409
    assert api.get("/incidents/999999").status_code == 404
    too_long = api.post(f"/incidents/{incident['id']}/resolve", json={"note": "x" * 2001})
    assert too_long.status_code == 422


def _cli(server: ServerHandle, capsys: pytest.CaptureFixture[str], *args: str
         ) -> tuple[int, str, str]:
    code = main(["--url", server.base_url, "--api-key", ADMIN_KEY, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_tail_prints_one_line_per_event_or_incident(
    quick_hub: Hub, server: ServerHandle, api: httpx.Client, device: mqtt.Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _cli(server, capsys, "anomalies", "tail", "--follow", "--for", "0.3",
                          "--interval", "0.1")
    assert code == 0 and out == "" and "no anomaly events yet; waiting" in err

    t0 = time.time()
    for seq in range(3):
        send_event(device, quick_hub, "pump-7", seq, t0 + seq, 2.0 + seq, ["bearing"])
    wait_for(lambda: [i for i in _incidents(api) if i["events"] == 3], what="the incident")
    code, out, _ = _cli(server, capsys, "anomalies", "tail")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    assert all("pump-7" in line and "channels bearing" in line for line in lines)
    assert "score 4 / threshold 1 (4.0x)" in lines[-1]  # newest last

    code, out, _ = _cli(server, capsys, "anomalies", "tail", "--incidents")
    (line,) = out.strip().splitlines()
    assert line.startswith("#") and "pump-7" in line and "3 event(s)" in line
    assert "peak score 4 / threshold 1" in line
