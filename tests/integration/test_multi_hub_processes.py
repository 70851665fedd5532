"""Two ``cloud-hub serve`` processes on one PostgreSQL database, splitting the agents' streams
with ``$share``, store every reading exactly once, also across a broker restart (mosquitto does
not restore shared subscriptions, so the agents' resend covers the gap) and a hub killed with
SIGKILL mid-stream (what it had not committed is delivered again, to it once it is back or to
the agents' resend).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from tests.integration.support import assert_stored_once, stored_readings, wait_for
from tests.pg import pg_database

pytestmark = [pytest.mark.integration, pytest.mark.hub, pytest.mark.postgres]
__all__ = ["pg_database"]


@pytest.fixture
def hubs(broker: Broker, pg_database: str, tmp_path: Path) -> Iterator[list[HubProcess]]:
    key = "multi-hub-admin-key-0123456789"
    procs = [HubProcess(tmp_path / f"hub-{i}", mqtt_port=broker.port, admin_api_key=key,
                        extra_env={**broker.hub_env(f"hub-{i}"),
                                   "EDGELOOP_DATABASE_URL": pg_database,
                                   "EDGELOOP_MQTT_SHARE_GROUP": "hubs"})
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


def test_two_hubs_store_each_reading_once_across_a_broker_restart_and_a_hub_killed(
    broker: Broker, hubs: list[HubProcess], pg_database: str, tmp_path: Path,
) -> None:
    client = HubClient(hubs[0].url, hubs[0].admin_api_key)
    agents = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
                   mqtt_auth=hub_enrollment(client, tmp_path / "bundles"),
                   state_root=tmp_path / "agents", trust_keys={})
    for i in range(4):
        agents.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", seed=i, rate_hz=20.0))
    agents.start()
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
        hubs[1].stop()  # reap it
        hubs[1].start(timeout=120)
        time.sleep(1.0)
    finally:
        agents.stop()
    assert_stored_once(client, agents.samples_generated(), pg_database)
    client.close()
