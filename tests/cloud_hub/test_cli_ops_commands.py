"""``cloud-hub``'s operations and drift commands (``anomalies tail``, ``incidents``,
``webhooks``, ``retrain``, ``drift``) against a running hub: output, the change on the hub's
side, and every mistake refused on one line of stderr, never a traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.db.drift_tables import RetrainPolicy
from cloud_hub.db.ops_tables import Incident, WebhookDelivery, WebhookRule
from cloud_hub.db.tables import Device
from cloud_hub.service import Hub
from shared.messages import AnomalyEvent, ModelRef, encode
from simulator.broker import Broker
from simulator.ports import free_port
from tests.cloud_hub.conftest import _ok, _refused, run_cli, started_hub
from tests.cloud_hub.fleet import FakeDevice
from tests.cloud_hub.helpers import _row, publish_wait, publisher_client, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


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
