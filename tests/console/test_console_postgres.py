"""Every page and fragment of the console against a hub on PostgreSQL. The browser tests run on
SQLite; PostgreSQL is stricter about SQL (the fleet's counts failed there with a GROUP BY on
an expression bound twice, unnoticed until the hubs' metrics read them), and it is the
database of a hub that scales out. A real hub on the secure broker, with a device that sent
its status, heartbeats and telemetry, a real TFLite model and an incident; each page must
answer 200 with its content, and the actions (an incident acknowledged and resolved, a webhook
rule made and disabled) must work."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.db.ops_tables import Incident, WebhookRule
from cloud_hub.metrics.processes import latest_broker_figures, list_processes
from cloud_hub.service import Hub
from cloud_hub.ui.security import SESSION_COOKIE, start_session
from shared.messages import DeviceStatus, Heartbeat, Status, TelemetryBatch, encode
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY, started_hub
from tests.cloud_hub.helpers import publish_wait, publisher_client, tiny_artifact, wait_for
from tests.pg import pg_database

pytestmark = [pytest.mark.hub, pytest.mark.postgres]
__all__ = ["pg_database"]

DEVICE = "pump-1"


@pytest.fixture
def hub(broker: Broker, tmp_path: Path, pg_database: str) -> Iterator[Hub]:
    with started_hub(broker, tmp_path / "hub", database_url=pg_database,
                     hub_report_s=0.5) as h:
        yield h


def _device_sends(broker: Broker, hub: Hub) -> None:
    now = time.time()
    client = publisher_client(broker)
    try:
        publish_wait(client, hub.topics.status(DEVICE), encode(
            Status(device_id=DEVICE, state=DeviceStatus.ONLINE, at=now)), retain=True)
        publish_wait(client, hub.topics.heartbeat(DEVICE), encode(Heartbeat(
            device_id=DEVICE, at=now, uptime_s=60.0, rss_bytes=10**7, outbox_depth=3,
            oldest_unsent_age_s=2.0, drops=0)))
        for seq in range(3):
            publish_wait(client, hub.topics.telemetry(DEVICE), encode(TelemetryBatch(
                device_id=DEVICE, epoch="0123456789abcdef", seq=seq, channels=["a", "b"],
                ts=[now - 10 + seq], values=[[1.0 + seq, 2.0]])))
    finally:
        client.disconnect()
        client.loop_stop()
    wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == 3, 20, "the batches stored")


def _broker_reported(hub: Hub) -> bool:
    """The hub's process row (what the Hubs page shows) carries the broker's figures."""
    with Session(hub.engine) as session:
        return latest_broker_figures(list_processes(session, now=time.time())) is not None


def _rule_id(hub: Hub) -> int:
    with Session(hub.engine) as session:
        rule = session.exec(select(WebhookRule).where(WebhookRule.name == "pg-hook")).one()
        assert rule.id is not None
        return rule.id


def test_every_console_page_and_action_answers_on_postgresql(broker: Broker, hub: Hub) -> None:
    _device_sends(broker, hub)
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    now = time.time()
    with Session(hub.engine) as session:
        incident = Incident(device_id=DEVICE, started_at=now - 30, ended_at=now - 20,
                            opened_at=now - 20, last_event_at=now - 20, updated_at=now - 20,
                            peak_score=3.0, peak_threshold=1.0, model_name=name,
                            model_version=version)
        session.add(incident)
        session.commit()
        incident_id = incident.id
        started = start_session(session, ADMIN_KEY, 3600.0)
        assert started is not None
    wait_for(lambda: _broker_reported(hub), 20,
             "the hub's process row with the broker's figures")
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url, cookies={SESSION_COOKIE: started[0]},
                          timeout=30) as ui:
            expected = {
                "/ui/fleet": DEVICE, "/ui/fleet/rows": DEVICE,
                "/ui/fleet?state=online": DEVICE, "/ui/fleet?state=incident": DEVICE,
                "/ui/fleet?state=out-of-sync": "No device matches",
                f"/ui/devices/{DEVICE}": DEVICE, f"/ui/devices/{DEVICE}/panel": "",
                f"/ui/devices/{DEVICE}/chart.json": '"a"',
                "/ui/hubs": hub.settings.mqtt_client_id, "/ui/hubs/rows": "clients connected",
                "/ui/inbox": DEVICE, "/ui/inbox/rows": DEVICE,
                f"/ui/incidents/{incident_id}": DEVICE,
                f"/ui/incidents/{incident_id}/panel": "p-open",
                f"/ui/incidents/{incident_id}/chart.json": "",
                "/ui/models": name, f"/ui/models/{name}/{version}": name,
                "/ui/rollouts": "", "/ui/notifications": "", "/ui/nav-counts": "",
            }
            for path, content in expected.items():
                answer = ui.get(path)
                assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
                assert content in answer.text, (path, answer.text[:500])
            # The actions: an incident acknowledged and resolved, a webhook rule made and
            # disabled (each answers with a redirect to the page that shows it).
            csrf = {"X-CSRF-Token": started[1].csrf_token}
            for path, form in ((f"/ui/incidents/{incident_id}/acknowledge", {"note": "seen"}),
                               (f"/ui/incidents/{incident_id}/resolve", {"note": "fixed"}),
                               ("/ui/webhooks", {"name": "pg-hook", "group": "nobody",
                                                 "url": "http://127.0.0.1:9/hook"})):
                answer = ui.post(path, data=form, headers=csrf)
                assert answer.status_code in (200, 303), (path, answer.text[:500])
            assert "p-resolved" in ui.get(f"/ui/incidents/{incident_id}/panel").text
            listed = ui.get("/ui/notifications").text
            assert "pg-hook" in listed
            answer = ui.post(f"/ui/webhooks/{_rule_id(hub)}/disable", headers=csrf)
            assert answer.status_code == 303, answer.text[:500]
    finally:
        server.stop()
