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
from simulator.broker import Broker
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
