"""Fleet-scale devices run the agent's core over one epoll loop per shard, with TLS and their own
credentials: a message leaves a device's outbox only when the hub acknowledges that it stored
it, what an acknowledgement shows missing goes out again, and a model arrives as it does for an
agent (desired → retained manifest and chunks → signature → shadow → swap → reported), with a
model that fails at run time rolled back and reported. A stand-in hub stores and acknowledges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.signing import SigningKey, generate_signing_key
from simulator.broker import Broker
from simulator.fleet import DeviceSpec
from simulator.profiles import PROFILES
from simulator.scale_fleet import ScaleFleet
from tests.edge_agent.support import Collector, HubStandIn, fixture_bytes, make_manifest
from tests.integration.support import wait_for

pytestmark = pytest.mark.integration

GOOD = fixture_bytes("ae_int8_w8c2.tflite")
NAN = fixture_bytes("nan_float32_w8c2.tflite")


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    c = Collector(broker)
    yield c
    c.close()


@pytest.fixture
def hub(broker: Broker) -> Iterator[HubStandIn]:
    stand_in = HubStandIn(broker)
    yield stand_in
    stand_in.close()


def _fleet(broker: Broker, root: Path, n: int, key: SigningKey | None = None,
           **overrides: dict[str, float]) -> ScaleFleet:
    key = key or generate_signing_key()
    fleet = ScaleFleet(mqtt_host=broker.host, mqtt_port=broker.port, state_root=root, shards=2,
                       trust_keys={key.key_id: key.public_b64()}, mqtt_auth=broker.device_auth,
                       overrides={"telemetry": {"batch_max_readings": 20,
                                                "batch_max_age_s": 0.2}, **overrides})
    for i in range(n):
        fleet.add(DeviceSpec(device_id=f"scale-{i}", profile="server", seed=i, rate_hz=10.0,
                             history_s=5.0))
    return fleet


def _every_seq_once(collector: Collector, fleet: ScaleFleet) -> None:
    for device_id, n in fleet.samples_generated().items():
        log = collector.device(device_id)
        assert log.readings() == n, (device_id, log.readings(), n)
        assert sorted(log.telemetry) == list(range(len(log.telemetry))), "no seq gap"
        ts = log.all_ts()
        assert ts == sorted(set(ts)), "each reading once, in order"


def test_every_reading_is_stored_once_and_outboxes_empty_only_on_the_hubs_word(
    broker: Broker, collector: Collector, tmp_path: Path
) -> None:
    fleet = _fleet(broker, tmp_path / "scale", 6)
    fleet.start()
    try:
        assert fleet.wait_connected(20) == 6
        # Every device, not their sum: a device its shard had not yet read from when the
        # others had made up the sum would end the test with nothing sent and no ack heard.
        wait_for(lambda: all(s.readings >= 60 for s in fleet.statuses().values()), 20,
                 "60 readings produced by every device")
    finally:
        assert fleet.stop(flush_timeout=20), "outboxes not emptied by the hub's acknowledgements"
    _every_seq_once(collector, fleet)
    statuses = fleet.statuses()
    assert all(s.outbox_depth == 0 and s.drops == 0 for s in statuses.values())
    assert all(s.readings_stored == fleet.samples_generated()[d]
               for d, s in statuses.items()), "counted as stored from the acknowledgements"
    assert all(s.acks_received > 0 and s.bad_messages == 0 for s in statuses.values()), {
        d: (s.acks_received, s.bad_messages, fleet.samples_generated()[d])
        for d, s in statuses.items()}


def test_what_the_broker_took_before_any_hub_listened_is_sent_again_for_the_hub(
    broker: Broker, tmp_path: Path
) -> None:
    # Devices stream into a broker where nothing is subscribed yet: every PUBACK is real and
    # every message goes nowhere. The hub's first acknowledgements show them missing.
    fleet = _fleet(broker, tmp_path / "scale", 3, outbox={"ack_timeout_s": 1.0})
    fleet.start()
    collector: Collector | None = None
    try:
        assert fleet.wait_connected(20) == 3
        wait_for(lambda: all(s.readings_sent >= 20 for s in fleet.statuses().values()), 20,
                 "readings taken by a broker with no subscriber")
        unheard = {d: s.readings_sent for d, s in fleet.statuses().items()}
        assert all(s.readings_stored == 0 for s in fleet.statuses().values())
        collector = Collector(broker)
        wait_for(lambda: all(s.resent > 0 and s.readings_stored >= unheard[d]
                             for d, s in fleet.statuses().items()), 30,
                 "the messages nobody heard, sent again and stored")
        assert fleet.stop(flush_timeout=30), "outboxes not emptied by the acknowledgements"
        _every_seq_once(collector, fleet)
    finally:
        if not fleet.stopped:
            fleet.stop(flush_timeout=5)
        if collector is not None:
            collector.close()


def test_model_reaches_every_device_through_the_update_path_and_a_failing_one_is_rolled_back(
    broker: Broker, hub: HubStandIn, collector: Collector, tmp_path: Path
) -> None:
    key = generate_signing_key()
    channels = PROFILES["server"].channel_names[:2]  # the fixture models read two channels
    hub.publish_model(make_manifest(key, GOOD, version=1, threshold=50.0, channels=channels),
                      GOOD)
    hub.publish_model(make_manifest(key, NAN, version=2, threshold=50.0, channels=channels),
                      NAN)
    forged = generate_signing_key()
    hub.publish_model(make_manifest(forged, GOOD, version=3, channels=channels), GOOD)
    fleet = _fleet(broker, tmp_path / "scale", 2, key, model={"shadow_windows": 0})
    fleet.add(DeviceSpec(device_id="scale-shadow", profile="server", seed=9, rate_hz=10.0),
              {"model": {"shadow_windows": 3, "max_shadow_anomaly_rate": 1.0}})
    fleet.start()
    try:
        assert fleet.wait_connected(20) == 3
        for device_id in fleet.devices:
            hub.set_desired(device_id, "pump-ae", 1)

        def last(device_id: str) -> dict[str, Any]:
            return collector.last_reported(device_id) or {}

        def reported(state: str, version: int, devices: list[str]) -> bool:
            return all(last(d).get("state") == state
                       and last(d).get("model", {}).get("version") == version for d in devices)

        wait_for(lambda: reported("active", 1, list(fleet.devices)), 30, "v1 on every device")
        assert all(d.core.store.current() is not None for d in fleet.devices.values())
        shadowed = [r["state"] for r in collector.device("scale-shadow").reported]
        assert "shadow" in shadowed and shadowed[-1] == "active"
        for device_id in fleet.devices:
            hub.set_desired(device_id, "pump-ae", 2)
        # Without a shadow run the bad model is swapped in, fails on its first window, and the
        # device goes back to v1 by itself; with one, it never replaces v1.
        wait_for(lambda: reported("rolled_back", 2, ["scale-0", "scale-1"]), 30,
                 "v2 rolled back after failing at run time")
        wait_for(lambda: reported("failed", 2, ["scale-shadow"]), 30, "v2 failed in shadow")
        for device_id in fleet.devices:
            assert last(device_id)["active"]["version"] == 1
            assert "non-finite" in last(device_id)["error"]
        hub.set_desired("scale-1", "pump-ae", 3)
        wait_for(lambda: reported("failed", 3, ["scale-1"]), 30, "a forged manifest refused")
        status = fleet.devices["scale-1"].status()
        assert status.active_model is not None and status.active_model["version"] == 1
        assert "signature" in (status.last_error or "")
    finally:
        fleet.stop(flush_timeout=10)
