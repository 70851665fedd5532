"""Breaking things for real: broker outages, a full outbox while offline, a model that fails at
run time, desired changes made while the device was away. Real mosquitto, real TFLite."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from shared.signing import SigningKey
from simulator.broker import Broker
from tests.edge_agent.support import (
    Collector,
    HubStandIn,
    ScriptedSource,
    agent_config,
    fixture_bytes,
    make_manifest,
    wait_until,
)

pytestmark = pytest.mark.integration
GOOD = fixture_bytes("ae_int8_w8c2.tflite")


def _persist_collector_session(broker: Broker, collector: Collector) -> None:
    """Like a hub that has been connected for a while: its session is in the broker's file."""
    broker.stop()
    broker.start()
    wait_until(collector.client.is_connected, 10, "collector back after the restart")



def _take_all_offline(agent: Agent, broker: Broker, source: ScriptedSource, total: int) -> None:
    """Stop the broker, let the paused source run out, and wait until every reading is in the
    agent and its last batch in the outbox."""
    broker.stop()
    wait_until(lambda: not agent.status()["connected"], 10, "agent offline")
    source.resume()
    wait_until(lambda: source.exhausted and agent.status()["readings"] == total, 30,
               "all readings taken in while offline")
    wait_until(lambda: agent.batcher.pending() == 0, 10, "last batch in the outbox")

def test_broker_killed_for_10s_while_3_agents_stream_loses_and_duplicates_nothing(
    broker: Broker, collector: Collector, tmp_path: Path
) -> None:
    _persist_collector_session(broker, collector)
    rate, total = 100.0, 1500
    sources = {f"dev-{i}": ScriptedSource(total, rate_hz=rate) for i in range(3)}
    agents = [Agent(agent_config(broker, tmp_path / d, d, None), source=s)
              for d, s in sources.items()]
    for agent in agents:
        agent.start()
    try:
        wait_until(lambda: all(a.status()["readings_sent"] >= 200 for a in agents), 20,
                   "every agent streaming")
        broker.kill()
        emitted_at_kill = {d: s.emitted for d, s in sources.items()}
        # The outage lasts while 10 s of readings are produced (a condition, not a sleep).
        wait_until(lambda: all(s.emitted - emitted_at_kill[d] >= 10 * rate or s.exhausted
                               for d, s in sources.items()), 30, "10 s of readings offline")
        assert all(a.status()["outbox_depth"] > 0 for a in agents), "agents buffered offline"
        broker.start()
        wait_until(lambda: all(s.exhausted for s in sources.values()), 30, "sources finished")
        wait_until(lambda: all(a.status()["outbox_depth"] == 0 and a.status()["readings"] == total
                               for a in agents), 30, "every outbox drained")
        assert all(a.status()["reconnects"] >= 1 for a in agents)
    finally:
        for agent in agents:
            agent.stop(timeout=5)
    for device_id in sources:
        log = collector.device(device_id)
        wait_until(lambda log=log: log.readings() == total, 15, f"{device_id}: all readings")
        assert sorted(log.telemetry) == list(range(len(log.telemetry))), "no seq gap"
        assert log.all_ts() == [1000.0 + i for i in range(total)], "each reading exactly once"


def test_a_batch_the_hub_refuses_is_dropped_counted_and_the_rest_is_stored(
    broker: Broker, tmp_path: Path
) -> None:
    """The hub dead-letters telemetry seq 0 every time it comes; it stores the rest. The agent
    gives seq 0 up after sending it again a few times (counted as a drop of its readings), and
    everything after it is acknowledged and leaves the outbox instead of being resent forever."""
    collector = Collector(broker, refuse={("telemetry", 0)})
    total = 400
    agent = Agent(agent_config(broker, tmp_path / "d", "dev-r", None,
                               outbox={"ack_timeout_s": 0.3}),
                  source=ScriptedSource(total, rate_hz=100.0))
    agent.start()
    try:
        wait_until(lambda: agent.status()["drops"] == 1, 30, "the refused batch given up")

        def accounted() -> dict[str, Any] | None:
            # Not "outbox empty and every reading taken in": the last readings wait in the open
            # batch (up to batch_max_age_s) outside the outbox, and the outbox counts a message
            # gone before the agent counts its readings stored (that once read 378 of 380).
            status = agent.status()
            settled = (status["outbox_depth"] == 0
                       and status["readings_stored"] + status["dropped_readings"] == total)
            return status if settled else None

        status = wait_until(accounted, 30, "every other reading acknowledged (stored or dropped)")
        dropped = status["dropped_readings"]
        assert 0 < dropped <= 20, "one batch (agent_config: at most 20 readings)"
        assert status["readings"] == total and agent.batcher.pending() == 0
        assert collector.refused >= 5, "sent again a few times before it was given up"
        log = collector.device("dev-r")
        assert sorted(log.telemetry)[0] == 1 and log.readings() == total - dropped
    finally:
        agent.stop(timeout=5)
        collector.close()


def test_outbox_overflow_while_offline_counts_every_lost_reading_and_keeps_anomalies(
    broker: Broker, hub: HubStandIn, collector: Collector, signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    hub.publish_model(make_manifest(signing_key, GOOD, threshold=0.0), GOOD)
    total = 3000
    source = ScriptedSource(total, batch=20)
    source.pause()
    config = agent_config(broker, tmp_path / "state", "dev-o", signing_key,
                          outbox={"max_bytes": 64 * 1024},
                          model={"shadow_windows": 0, "realert_windows": 20})
    agent = Agent(config, source=source)
    agent.start()
    try:
        hub.set_desired("dev-o", "pump-ae", 1)
        wait_until(lambda: agent.status()["active_model"], 20, "model active")
        _take_all_offline(agent, broker, source, total)
        offline = agent.status()
        assert offline["dropped_readings"] > 0, "the outbox really overflowed"
        assert offline["dropped_anomalies"] == 0
        assert offline["outbox_bytes"] <= 64 * 1024
        broker.start()
        wait_until(lambda: agent.status()["outbox_depth"] == 0, 30, "outbox drained")
        final = agent.status()
    finally:
        agent.stop(timeout=5)
    log = collector.device("dev-o")
    wait_until(lambda: log.readings() + final["dropped_readings"] == total, 15,
               "delivered + counted drops == produced")
    assert len(set(log.all_ts())) == log.readings(), "no reading twice"
    assert len(log.anomalies) == final["anomalies_raised"] > 0, "every anomaly survived"
    assert sorted(log.anomalies) == list(range(final["anomalies_raised"]))
    kept = log.all_ts()
    assert kept == sorted(kept) and kept[-1] == 1000.0 + total - 1, "oldest dropped first"


def test_model_that_fails_at_run_time_is_rolled_back_by_the_agent(
    broker: Broker, hub: HubStandIn, collector: Collector, signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    nan_model = fixture_bytes("nan_float32_w8c2.tflite")
    hub.publish_model(make_manifest(signing_key, GOOD, version=1, threshold=0.2), GOOD)
    hub.publish_model(make_manifest(signing_key, nan_model, version=2, threshold=0.2),
                      nan_model)
    config = agent_config(broker, tmp_path / "state", "dev-x", signing_key)
    agent = Agent(config, source=ScriptedSource(10**9, rate_hz=100.0))
    agent.start()
    try:
        hub.set_desired("dev-x", "pump-ae", 1)
        wait_until(lambda: (agent.status()["active_model"] or {}).get("version") == 1, 20,
                   "v1 active")
        hub.set_desired("dev-x", "pump-ae", 2)

        def rolled_back() -> dict[str, object] | None:
            last = collector.last_reported("dev-x")
            return last if last and last["state"] == "rolled_back" else None

        reported = wait_until(rolled_back, 20, "reported rolled_back")
        assert reported["model"]["version"] == 2
        assert reported["active"]["version"] == 1
        assert "non-finite output" in reported["error"]
        status = agent.status()
        assert status["active_model"]["version"] == 1
        assert status["model_state"] == "rolled_back"
        scored = agent.detector.windows_scored
        wait_until(lambda: agent.detector.windows_scored > scored + 10, 10, "v1 scoring again")
    finally:
        agent.stop(timeout=5)


def test_desired_change_made_while_the_agent_was_away_arrives_through_its_session(
    broker: Broker, hub: HubStandIn, signing_key: SigningKey, tmp_path: Path
) -> None:
    hub.publish_model(make_manifest(signing_key, GOOD, threshold=0.2), GOOD)
    config = agent_config(broker, tmp_path / "state", "dev-s", signing_key)
    first = Agent(config, source=ScriptedSource(10**9, rate_hz=50.0))
    first.start()
    wait_until(lambda: first.status()["connected"], 10, "first run connected")
    first.stop(timeout=5)
    # Not retained: only the broker-side persistent session can carry it to the agent.
    hub.set_desired("dev-s", "pump-ae", 1, retain=False)
    first.start()  # the same Agent object started again, as the simulator may do
    try:
        wait_until(lambda: (first.status()["active_model"] or {}).get("version") == 1, 20,
                   "the desired model from the offline change is active")
        readings = first.status()["readings"]
        wait_until(lambda: first.status()["readings"] > readings + 20, 10, "reading again")
    finally:
        first.stop(timeout=5)


def test_stop_with_the_link_down_returns_at_once_and_keeps_the_pending_readings(
    broker: Broker, collector: Collector, tmp_path: Path
) -> None:
    """Nothing can be sent while the broker is down: stop() does not wait out its grace period
    for acknowledgements that cannot come; what is pending is sent after the next start."""
    _persist_collector_session(broker, collector)
    total = 400
    source = ScriptedSource(total, batch=20)
    source.pause()
    config = agent_config(broker, tmp_path / "state", "dev-s", None)
    agent = Agent(config, source=source)
    agent.start()
    result: list[bool] = []
    try:
        wait_until(lambda: agent.status()["connected"], 10, "agent online")
        _take_all_offline(agent, broker, source, total)
        assert agent.status()["outbox_depth"] > 0
        stopping = threading.Thread(target=lambda: result.append(agent.stop(timeout=600)))
        stopping.start()
        stopping.join(60)  # a stop that waited out its grace period would still be running
        assert result == [False], "stop() returned, saying not everything was acknowledged"
    finally:
        if not result:
            agent.stop(timeout=5)
    broker.start()
    again = Agent(config, source=ScriptedSource(0))
    again.start()
    try:
        wait_until(lambda: again.status()["outbox_depth"] == 0, 30, "sent after the restart")
    finally:
        again.stop(timeout=5)
    log = collector.device("dev-s")
    wait_until(lambda: log.readings() == total, 15, "every reading kept and delivered")
    assert log.all_ts() == [1000.0 + i for i in range(total)], "each reading exactly once"
