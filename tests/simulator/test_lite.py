"""Fleet-scale devices: each publishes its readings through its outbox, emptied only by PUBACKs."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from shared.messages import DeviceStatus, HubStatus, TelemetryBatch, decode, encode
from shared.topics import DeviceTopic, Topics
from simulator.broker import Broker
from simulator.fleet import DeviceSpec
from simulator.lite import LiteFleet
from tests.integration.support import wait_for

pytestmark = pytest.mark.integration


def test_every_reading_reaches_the_broker_once_per_seq(broker: Broker, tmp_path: Path) -> None:
    received: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-counter")

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe(Topics().all_devices(DeviceTopic.TELEMETRY), 1)

    sub.on_connect = on_connect
    sub.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    sub.on_message = lambda c, u, m: received.put(bytes(m.payload))
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        fleet = LiteFleet(mqtt_host=broker.host, mqtt_port=broker.port,
                          state_root=tmp_path / "lite", shards=2, batch_max_readings=20,
                          batch_max_age_s=0.2)
        for i in range(6):
            fleet.add(DeviceSpec(device_id=f"lite-{i}", profile="server", seed=i,
                                 rate_hz=10.0, history_s=5.0))
        fleet.start()
        assert fleet.wait_connected(20) == 6
        deadline = time.monotonic() + 20
        while (sum(s["readings"] for s in fleet.statuses().values()) < 6 * 60
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert fleet.stop(flush_timeout=20), "outboxes not drained at stop"
        generated = fleet.samples_generated()

        readings: dict[str, dict[int, int]] = {}
        total = sum(generated.values())
        deadline = time.monotonic() + 20
        while sum(sum(v.values()) for v in readings.values()) < total:
            payload = received.get(timeout=max(0.1, deadline - time.monotonic()))
            batch = decode(TelemetryBatch, payload)
            readings.setdefault(batch.device_id, {})[batch.seq] = batch.readings
        assert {d: sum(v.values()) for d, v in readings.items()} == generated
        assert all(s["outbox_depth"] == 0 and s["drops"] == 0
                   for s in fleet.statuses().values())
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_lite_devices_resend_for_a_hub_session_new_after_their_outage(
    broker: Broker, tmp_path: Path
) -> None:
    topics = Topics()

    def announce(session: str) -> None:
        """A hub stand-in's retained birth (a fresh client each time: paho leaks a socket pair
        when one client runs its loop twice)."""
        hub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-hub-stand-in")
        hub.connect(broker.host, broker.port)
        hub.loop_start()
        status = HubStatus(device_id="hub-1", state=DeviceStatus.ONLINE, session=session,
                           at=time.time())
        hub.publish(topics.hub_status("hub-1"), encode(status), qos=1,
                    retain=True).wait_for_publish(10)
        hub.disconnect()
        hub.loop_stop()

    fleet = LiteFleet(mqtt_host=broker.host, mqtt_port=broker.port, state_root=tmp_path / "lite",
                      shards=1, batch_max_readings=5, batch_max_age_s=0.2)
    for i in range(2):
        fleet.add(DeviceSpec(device_id=f"lite-{i}", profile="server", seed=i, rate_hz=20.0))
    announce("aaaa0001")
    fleet.start()
    try:
        assert fleet.wait_connected(20) == 2
        wait_for(lambda: all(s["readings_sent"] >= 10 for s in fleet.statuses().values()), 20,
                 "readings acknowledged before the outage")
        assert all(s["resent"] == 0 for s in fleet.statuses().values()), \
            "the session seen first, at connect, is no reason to resend"
        broker.stop()
        broker.start()
        assert fleet.wait_connected(30) == 2
        announce("bbbb0002")
        wait_for(lambda: all(s["resent"] >= 2 for s in fleet.statuses().values()), 20,
                 "every device sending again what was acknowledged since its outage")
        assert all(s["bad_messages"] == 0 for s in fleet.statuses().values())
    finally:
        assert fleet.stop(flush_timeout=20)
