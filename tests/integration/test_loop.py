"""The whole loop on real parts: mosquitto, ``cloud-hub serve``, three edge agents, TFLite.

A tiny model is trained on what the agents streamed, published, rolled out to all three; one
injected fault is detected on the device and stored by the hub; every reading generated is
stored exactly once; a malformed telemetry payload lands in the dead letters while ingest goes on.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from rich.console import Console

from cloud_hub.cli.client import HubClient
from shared.topics import TopicAccess, Topics
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.loop import publish_model, roll_out, train_model, wait_for_telemetry
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]

TINY_SPEC = {"family": "dense_ae", "window": 16, "hidden": 32, "latent": 8, "epochs": 3,
             "threshold_quantile": 0.999, "threshold_factor": 1.5}


@pytest.fixture
def fleet(broker: Broker, client: HubClient, tmp_path: Path) -> Iterator[Fleet]:
    key = client.get("/signing-key")
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
              mqtt_auth=hub_enrollment(client, tmp_path / "bundles"),
              state_root=tmp_path / "agents",
              trust_keys={key["key_id"]: key["public_key"]})
    for i in range(3):
        f.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", seed=i, rate_hz=10.0, history_s=60.0))
    f.start()
    try:
        yield f
    finally:
        f.stop()


def _publish_raw(broker: Broker, topic: str, payload: bytes) -> None:
    """Publish bytes with a plain paho client, QoS 1, and wait for the broker's PUBACK (an
    identity that may write only ``topic``: a device with broken firmware, in effect)."""
    writer = broker.add_client("test-malformed", TopicAccess(publish=(topic,), subscribe=()))
    c = broker.client(writer, protocol=mqtt.MQTTv311)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    finally:
        c.loop_stop()
        c.disconnect()


def test_fault_is_detected_on_the_device_and_every_reading_is_stored_once(
    broker: Broker, client: HubClient, fleet: Fleet
) -> None:
    say: Callable[[str], None] = lambda _text: None  # noqa: E731
    quiet = Console(file=io.StringIO())
    device_ids = list(fleet.devices)

    wait_for_telemetry(client, fleet, min_seconds=60.0, timeout=60.0)
    ref = train_model(client, quiet, name="it-pump", devices=device_ids, until=time.time(),
                      spec=TINY_SPEC, timeout=240.0)
    model = publish_model(client, ref, say)
    assert model["quantization"] == "int8"
    rollout = roll_out(client, fleet, ref, say, timeout=60.0)
    assert rollout["devices_updated"] == 3
    # the report gives the hub's verdict once the last wave was observed, not "running"
    assert rollout["rollout_status"] == "succeeded", rollout
    assert rollout["hub_seconds_to_full"] is not None
    assert all(s["active_model"]["name"] == "it-pump" for s in fleet.statuses().values())

    # A malformed batch on a real device's topic: refused into the dead letters, ingest goes on.
    bad_topic = Topics().telemetry("pump-001")
    _publish_raw(broker, bad_topic, b'{"v": 1, "device_id": "pump-001", "seq": "x"}')
    dead = wait_for(lambda: [d for d in client.get("/dead-letters") if d["topic"] == bad_topic],
                    30.0, "the malformed batch in the dead letters")
    assert dead[0]["reason"]

    truth = fleet.devices["pump-002"].source.inject(
        "step", at=time.time() + 1.0, duration=4.0, severity=3.0)

    def matching() -> list[dict[str, Any]]:
        return [a for a in client.get("/anomalies", device_id="pump-002")
                if a["ts_start"] < truth.end and a["ts_end"] >= truth.start]

    detected = wait_for(matching, 30.0, "an anomaly overlapping the injected step fault")
    assert detected[0]["model_name"] == "it-pump"
    assert detected[0]["stored_at"] >= truth.start

    fleet.stop()
    generated = fleet.samples_generated()

    def all_stored() -> dict[str, int] | None:
        stored = {r["device_id"]: r["readings"] for r in client.get("/telemetry/summary")}
        return stored if all(stored.get(d, 0) >= n for d, n in generated.items()) else None

    stored = wait_for(all_stored, 30.0, "every generated reading at the hub")
    assert {d: stored[d] for d in generated} == generated
    for device_id, n in generated.items():
        data = client.get("/telemetry", device_id=device_id)
        ts = np.asarray(data["ts"])
        assert len(ts) == n
        assert np.all(np.diff(ts) > 0), f"{device_id}: a reading is stored twice or out of order"
    metrics = client.get("/metrics")
    assert metrics["dead_letters"] >= 1
