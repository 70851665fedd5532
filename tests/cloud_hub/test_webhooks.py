"""Webhook notifications against a real HTTP receiver on a free local port: signed with
HMAC-SHA256 (checked by the receiver), retried with back-off until the receiver recovers,
failed for good (and visible) when it never does, and filtered by group and score."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.notify.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    sign_body,
    verify_signature,
)
from cloud_hub.service import Hub
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY, started_hub
from tests.cloud_hub.helpers import publisher_client, wait_for
from tests.cloud_hub.test_incidents import send_event

pytestmark = [pytest.mark.integration, pytest.mark.hub]


@dataclass
class Receiver:
    """A webhook receiver: verifies each signature; ``fail_first`` answers 503 that often."""

    fail_first: dict[str, int] = field(default_factory=dict)  # path -> failures left
    secrets: dict[str, str] = field(default_factory=dict)  # path -> the rule's secret
    received: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, headers: Any, body: bytes) -> int:
        with self.lock:
            record = {"path": path, "event": headers.get(EVENT_HEADER),
                      "delivery": headers.get(DELIVERY_HEADER), "body": body}
            try:
                verify_signature(self.secrets.get(path, ""), body, headers.get(SIGNATURE_HEADER))
                record["signature"] = "valid"
            except SignatureError as exc:
                record["signature"] = str(exc)
            self.received.append(record)
            if record["signature"] != "valid":
                return 401
            if self.fail_first.get(path, 0) > 0:
                self.fail_first[path] -= 1
                return 503
            return 204

    def accepted(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received if r["path"] == path
                    and r["signature"] == "valid"]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver(fail_first={"/flaky": 2, "/down": 10**6})

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            code = state.handle(self.path, self.headers, body)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    with started_hub(broker, tmp_path / "hub", incident_gap_s=5.0, incident_quiet_s=3600.0,
                     incident_tick_s=0.1, webhook_backoff_s=0.2, webhook_max_attempts=3,
                     webhook_timeout_s=2.0) as h:
        yield h


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    server: ServerHandle = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url + "/api/v1",
                          headers={"X-API-Key": ADMIN_KEY}, timeout=30) as client:
            yield client
    finally:
        server.stop()


def _rule(api: httpx.Client, receiver: Receiver, base: str, path: str, **match: Any) -> int:
    created = api.post("/webhooks", json={"name": path.strip("/"), "url": base + path, **match})
    assert created.status_code == 201, created.text
    receiver.secrets[path] = created.json()["secret"]
    rule_id: int = created.json()["id"]
    return rule_id


def test_incident_notifications_are_signed_retried_and_recorded(
    broker: Broker,
    hub: Hub, api: httpx.Client, receiver: tuple[Receiver, str]
) -> None:
    state, base = receiver
    client = publisher_client(broker)
    try:
        send_event(client, hub, "pump-1", 0, time.time(), 1.0, ["boot"])  # the device exists
        wait_for(lambda: api.get("/incidents").json(), what="the first incident")
        assert api.patch("/devices/pump-1", json={"group": "plant-a"}).status_code == 200
        flaky = _rule(api, state, base, "/flaky", group="plant-a")
        down = _rule(api, state, base, "/down")
        _rule(api, state, base, "/other-group", group="plant-b")
        _rule(api, state, base, "/high-score", min_score=50.0)
        # a new incident, far from the first in device time
        send_event(client, hub, "pump-1", 1, time.time() + 600, 3.0, ["pressure"])
        send_event(client, hub, "pump-1", 2, time.time() + 601, 9.0, ["pressure"])
    finally:
        client.disconnect()
        client.loop_stop()
    # Quiet periods short (2 s) only once both events are in one incident: the quiet runs from
    # when the hub stored an incident's last event, and a loaded machine may store two events
    # more than 2 s apart, which would rightly make them two incidents.
    wait_for(lambda: [i for i in api.get("/incidents").json() if i["events"] == 2],
             timeout=30, what="the second incident with both its events")
    hub.incident_tick.policy = replace(hub.incident_tick.policy, quiet_s=2.0)

    # /flaky answered 503 twice, then took it: one opening and (after the quiet period) one
    # resolution, each delivered once with a valid signature.
    events = wait_for(lambda: len(state.accepted("/flaky")) >= 4 and state.accepted("/flaky"),
                      timeout=30, what="the flaky receiver to get both notifications")
    # The first incident was over before any rule existed: it sent nothing.
    assert [r["event"] for r in events] == ["incident.opened"] * 3 + ["incident.resolved"]
    assert len({r["delivery"] for r in events[:3]}) == 1  # 2 refused + 1 taken: one delivery
    opened = json.loads(events[0]["body"])
    assert opened["incident"]["device_id"] == "pump-1" and opened["device"]["group"] == "plant-a"
    assert opened["console_path"] == f"/ui/incidents/{opened['incident']['id']}"
    resolved = [json.loads(r["body"]) for r in events if r["event"] == "incident.resolved"]
    assert resolved and resolved[-1]["incident"]["state"] == "resolved"

    deliveries = api.get("/webhooks/deliveries", params={"rule_id": flaky}).json()
    first_incident_ones = [d for d in deliveries if d["event"] == "incident.opened"
                           and d["incident_id"] == opened["incident"]["id"]]
    assert first_incident_ones[0]["status"] == "delivered"
    assert first_incident_ones[0]["attempts"] == 3

    # /down never answered 2xx: failed after 3 attempts, with the reason kept.
    failed = wait_for(lambda: api.get("/webhooks/deliveries",
                                      params={"rule_id": down, "status": "failed"}).json(),
                      timeout=30, what="the failing deliveries to give up")
    assert failed[0]["attempts"] == 3 and failed[0]["last_status_code"] == 503
    assert "HTTP 503" in failed[0]["last_error"]
    rules = {r["name"]: r for r in api.get("/webhooks").json()}
    assert rules["down"]["deliveries"]["failed"] >= 1
    # Other group and a higher minimum score: never sent.
    assert state.accepted("/other-group") == [] and state.accepted("/high-score") == []
    assert all(r["signature"] == "valid" for r in state.received)


def test_webhook_rules_need_admin_and_a_valid_url(api: httpx.Client) -> None:
    bad = api.post("/webhooks", json={"name": "x", "url": "ftp://example.com/hook"})
    assert bad.status_code == 422 and "http://" in bad.text
    viewer = api.post("/api-keys", json={"name": "ro", "scope": "read"}).json()["key"]
    refused = api.post("/webhooks", json={"name": "x", "url": "http://127.0.0.1:9/x"},
                       headers={"X-API-Key": viewer})
    assert refused.status_code == 403
    created = api.post("/webhooks", json={"name": "x", "url": "http://127.0.0.1:9/x"}).json()
    listed = api.get("/webhooks", headers={"X-API-Key": viewer}).json()
    assert "secret" not in listed[0] and listed[0]["secret_prefix"] == created["secret"][:10]
    assert api.patch(f"/webhooks/{created['id']}", json={"enabled": False}).json()[
        "enabled"] is False
    assert api.delete(f"/webhooks/{created['id']}").status_code == 204
    assert api.delete(f"/webhooks/{created['id']}").status_code == 404


def test_a_receiver_rejects_a_tampered_or_stale_body() -> None:
    body = b'{"event":"incident.opened"}'
    header = sign_body("s3cret", body, timestamp=1_800_000_000)
    assert verify_signature("s3cret", body, header, now=1_800_000_010) == 1_800_000_000
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature("s3cret", body + b" ", header, now=1_800_000_010)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature("other", body, header, now=1_800_000_010)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_signature("s3cret", body, header, now=1_800_000_000 + 3600)
    with pytest.raises(SignatureError, match="missing"):
        verify_signature("s3cret", body, None)
