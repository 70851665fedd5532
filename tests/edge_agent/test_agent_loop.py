"""The agent end to end against a real mosquitto: model rollout, detection, telemetry delivery."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.detect.records import Detection
from edge_agent.sources.base import Reading
from edge_agent.telemetry.outbox import Outbox
from shared.signing import SigningKey
from simulator.broker import Broker
from tests.edge_agent.support import (
    Collector,
    HubStandIn,
    ScriptedSource,
    agent_config,
    fixture_bytes,
    make_manifest,
    signal_value,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_agent_runs_rolled_out_model_and_delivers_every_reading_once(
    broker: Broker, hub: HubStandIn, collector: Collector, signing_key: SigningKey, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent")
    data = fixture_bytes("ae_int8_w8c2.tflite")
    manifest = make_manifest(signing_key, data, threshold=0.2)
    hub.publish_model(manifest, data)

    def value(i: int) -> tuple[float, float]:
        a, b = signal_value(i)
        return (a + 8.0, b) if 700 <= i < 710 else (a, b)  # one injected spike on channel a

    source = ScriptedSource(1000, rate_hz=500.0, value=value)
    config = agent_config(broker, tmp_path / "state", "dev-1", signing_key)
    agent = Agent(config, source=source)
    assert agent.status()["connected"] is False
    source.pause()  # the spike must come after the model is active, however slow the machine
    agent.start()
    try:
        wait_until(lambda: agent.status()["connected"], 10, "agent connected")
        assert agent.status()["active_model"] is None
        hub.set_desired("dev-1", "pump-ae", 1)
        wait_until(lambda: (agent.status()["active_model"] or {}).get("version") == 1, 20,
                   "model v1 active")
        source.resume()
        wait_until(lambda: source.exhausted, 20, "source finished")
        wait_until(lambda: agent.status()["outbox_depth"] == 0
                   and agent.status()["readings"] == 1000, 20, "outbox drained")
    finally:
        agent.stop(timeout=5)
    device = collector.device("dev-1")
    wait_until(lambda: device.readings() == 1000, 10, "all readings at the collector")
    assert sorted(device.telemetry) == list(range(len(device.telemetry)))
    assert device.all_ts() == [1000.0 + i for i in range(1000)]
    assert device.anomalies, "the spike raised no anomaly"
    first = device.anomalies[min(device.anomalies)]
    assert first["model"] == {"name": "pump-ae", "version": 1}
    assert 1000 + 700 <= first["ts"][1] < 1000 + 710 + 8
    assert first["channels"][0] == "a"
    reported = collector.last_reported("dev-1")
    assert reported is not None and reported["state"] == "active"
    assert reported["model"]["sha256"] == manifest.sha256
    assert device.status[-1]["state"] == "offline"
    assert device.heartbeats, "heartbeats were published"
    beat = device.heartbeats[-1]
    assert beat["rss_bytes"] > 0 and beat["uptime_s"] > 0
    assert beat["inference_us_p50"] is not None and beat["inference_us_p99"] is not None
    # What an operator reads at INFO: the connection, the download, each anomaly (ISO times).
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith(f"mqtt dev-1: connected to 127.0.0.1:{broker.port}") for m in info)
    assert any(m.startswith("model pump-ae v1: downloading") for m in info)
    assert any(m.startswith("model pump-ae v1: download complete in") for m in info)
    anomaly_lines = [m for m in info if m.startswith("agent dev-1: anomaly at 1970-01-01T00:")]
    assert len(anomaly_lines) == len(device.anomalies), info


def test_bad_messages_are_counted_and_the_agent_goes_on(
    broker: Broker, hub: HubStandIn, collector: Collector, tmp_path: Path
) -> None:
    source = ScriptedSource(10**9, rate_hz=100.0)
    agent = Agent(agent_config(broker, tmp_path / "state", "dev-b", None), source=source)
    agent.start()
    try:
        wait_until(lambda: agent.status()["connected"], 10, "connected")
        # The agent subscribes before it publishes `online`, so once `online` is seen the
        # broker already routes `desired` to it.
        wait_until(lambda: _saw_online(collector, "dev-b"), 10, "online status")
        hub.client.publish("edgeloop/v1/devices/dev-b/desired", b"{not json", qos=1)
        hub.client.publish("edgeloop/v1/devices/dev-b/desired", b'{"v": 9}', qos=1)
        hub.client.publish("edgeloop/v1/hub/test-hub/status", b"{not json", qos=1)
        hub.client.publish("edgeloop/v1/hub/test-hub/status", b'{"v":1,"device_id":"hub-2",'
                           b'"state":"online","session":"0123abcd","at":1.0}', qos=1)
        wait_until(lambda: agent.status()["bad_messages"] == 4, 10, "bad messages counted")
        sent = agent.status()["readings_sent"]
        wait_until(lambda: agent.status()["readings_sent"] > sent + 50, 10, "still streaming")
        assert agent.status()["model_state"] is None
    finally:
        agent.stop(timeout=5)


def _saw_online(collector: Collector, device_id: str) -> bool:
    with collector.lock:
        log = collector.devices.get(device_id)
        return log is not None and any(s.get("state") == "online" for s in log.status)


def test_status_after_stop_reports_the_last_state(
    broker: Broker, collector: Collector, tmp_path: Path
) -> None:
    source = ScriptedSource(200, rate_hz=0.0)
    agent = Agent(agent_config(broker, tmp_path / "state", "dev-s", None), source=source)
    agent.start()
    try:
        wait_until(lambda: agent.status()["readings"] == 200, 10, "all readings taken")
    finally:
        agent.stop(timeout=5)
    status = agent.status()
    assert status["connected"] is False
    assert status["readings"] == 200
    assert status["outbox_depth"] == 0, "stop waits for the hub's acknowledgement"
    assert status["readings_stored"] == 200


def test_stop_waits_for_the_worker_to_store_what_it_read_before_closing_the_outbox(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker still busy past the grace period (a slow disk makes each commit wait) used to
    # have the outbox closed under it: "Cannot operate on a closed database" in its thread, and
    # what it had read but not stored was lost. Here it is held inside its first reading.
    caplog.set_level(logging.WARNING, logger="edge_agent")
    total = 10_000
    source = ScriptedSource(total, batch=total)
    config = agent_config(broker, tmp_path / "state", "dev-q", None,
                          telemetry={"batch_max_readings": 1000})
    agent = Agent(config, source=source)
    agent.start()
    gate = threading.Event()
    push = agent.detector.push

    def held(reading: Reading) -> Detection | None:
        gate.wait(30)
        return push(reading)

    agent.detector.push = held  # type: ignore[method-assign]
    wait_until(lambda: source.exhausted, 10, "the source read to its end")
    stopper = threading.Thread(target=agent.stop, kwargs={"timeout": 0})
    stopper.start()
    wait_until(lambda: "still storing what was read" in caplog.text or not stopper.is_alive(),
               20, "stop past its grace period")
    gate.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert agent.status()["readings"] == total
    outbox = Outbox.inspect(tmp_path / "state" / "outbox.db")
    assert outbox.next_seq["dev-q/telemetry"] == total // 1000, "every batch in the outbox"
    assert outbox.drops.messages == 0
