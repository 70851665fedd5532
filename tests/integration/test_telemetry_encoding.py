"""The telemetry encoding an agent and its hubs settle on (shared/packed.py), end to end: a secure
broker, a hub of this build announcing on its presence record that it reads MessagePack, and an
agent left at ``encoding = "auto"`` that then sends MessagePack, every reading stored once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from cloud_hub.db.queries import read_telemetry
from cloud_hub.service import Hub
from edge_agent.agent import Agent
from shared.packed import is_msgpack
from shared.signing import generate_signing_key
from shared.topics import DeviceTopic
from simulator.broker import Broker
from simulator.fleet import DeviceSpec
from simulator.scale_fleet import ScaleFleet
from tests.cloud_hub.conftest import served_hub
from tests.cloud_hub.helpers import Subscriber
from tests.edge_agent.support import ScriptedSource, agent_config, signal_value, wait_until

pytestmark = [pytest.mark.integration]
DEVICE = "dev-packed"
TOTAL = 400


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    with served_hub(broker, tmp_path / "hub", (DEVICE,)) as h:
        yield h


def test_an_agent_left_at_auto_sends_msgpack_to_a_hub_that_reads_it_and_all_is_stored(
    broker: Broker, hub: Hub, tmp_path: Path
) -> None:
    seen = Subscriber(broker, hub.topics.telemetry(DEVICE), client_id="test-wire")
    source = ScriptedSource(TOTAL, rate_hz=200.0)
    source.pause()  # until the agent has heard the hub's presence record
    agent = Agent(agent_config(broker, tmp_path / DEVICE, DEVICE, None), source=source)
    assert agent.config.telemetry.encoding == "auto"
    agent.start()
    try:
        wait_until(lambda: agent.status()["hub"]["hubs_online"] != [], 20, "the hub heard")
        source.resume()
        wait_until(lambda: source.exhausted, 30, "every reading taken")
        wait_until(lambda: hub.ingest.snapshot()["telemetry_readings"] == TOTAL, 30,
                   "every reading stored")
        wait_until(lambda: agent.status()["outbox_depth"] == 0, 30, "the hub acknowledged all")
    finally:
        agent.stop(timeout=5)
        seen.close()
    payloads = []
    while not seen.messages.empty():
        payloads.append(bytes(seen.messages.get().payload))
    assert payloads and all(is_msgpack(p) for p in payloads), "every batch in MessagePack"
    assert hub.ingest.snapshot()["dead_letters"] == 0
    with Session(hub.engine) as session:
        piece = read_telemetry(session, device_id=DEVICE)
    assert piece.ts.tolist() == [1000.0 + i for i in range(TOTAL)]
    assert piece.values.tolist() == [list(signal_value(i)) for i in range(TOTAL)]


def test_the_many_device_fleet_negotiates_msgpack_with_the_hub_too(
    broker: Broker, tmp_path: Path
) -> None:
    """The fleet's transport (simulator/shard_wire.py) hands the core the presence record's
    user properties as the daemon's link does: its devices send MessagePack to this hub."""
    devices = tuple(f"fleet-{i}" for i in range(3))
    key = generate_signing_key()
    with served_hub(broker, tmp_path / "hub", devices) as hub:
        seen = Subscriber(broker, hub.topics.all_devices(DeviceTopic.TELEMETRY),
                          client_id="test-fleet-wire")
        fleet = ScaleFleet(mqtt_host=broker.host, mqtt_port=broker.port,
                           state_root=tmp_path / "fleet", shards=1,
                           trust_keys={key.key_id: key.public_b64()},
                           mqtt_auth=broker.device_auth,
                           overrides={"telemetry": {"batch_max_readings": 20,
                                                    "batch_max_age_s": 0.2}})
        for i, device_id in enumerate(devices):
            fleet.add(DeviceSpec(device_id=device_id, profile="server", seed=i, rate_hz=20.0,
                                 history_s=0.0))
        fleet.start()
        try:
            assert fleet.wait_connected(20) == len(devices)
            wait_until(lambda: hub.ingest.snapshot()["telemetry_readings"] >= 300, 30,
                       "readings stored")
        finally:
            assert fleet.stop(flush_timeout=20), "outboxes emptied by the hub's word"
            seen.close()
        generated = sum(fleet.samples_generated().values())
        wait_until(lambda: hub.ingest.snapshot()["telemetry_readings"] == generated, 20,
                   "every reading stored")
        assert hub.ingest.snapshot()["dead_letters"] == 0
    payloads = []
    while not seen.messages.empty():
        payloads.append(bytes(seen.messages.get().payload))
    # Batches made before the hub's record arrived went out in JSON; the rest in MessagePack.
    assert payloads and is_msgpack(payloads[-1]), "the fleet's last batches in MessagePack"
    assert sum(map(is_msgpack, payloads)) > len(payloads) // 2
