"""Fleet-scale devices follow the delivery protocol: a message leaves a device's outbox only when
the hub acknowledges that it stored it, and what an acknowledgement shows missing goes out
again. A stand-in hub (:class:`~tests.edge_agent.support.Collector`) stores and acknowledges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.broker import Broker
from simulator.fleet import DeviceSpec
from simulator.lite import LiteFleet
from tests.edge_agent.support import Collector
from tests.integration.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    c = Collector(broker)
    yield c
    c.close()


def _fleet(broker: Broker, root: Path, n: int, **options: float) -> LiteFleet:
    fleet = LiteFleet(mqtt_host=broker.host, mqtt_port=broker.port, state_root=root, shards=2,
                      batch_max_readings=20, batch_max_age_s=0.2, mqtt_auth=broker.device_auth,
                      **options)
    for i in range(n):
        fleet.add(DeviceSpec(device_id=f"lite-{i}", profile="server", seed=i, rate_hz=10.0,
                             history_s=5.0))
    return fleet


def _every_seq_once(collector: Collector, fleet: LiteFleet) -> None:
    generated = fleet.samples_generated()
    for device_id, n in generated.items():
        log = collector.device(device_id)
        assert log.readings() == n, (device_id, log.readings(), n)
        assert sorted(log.telemetry) == list(range(len(log.telemetry))), "no seq gap"
        ts = log.all_ts()
        assert ts == sorted(set(ts)), "each reading once, in order"


def test_every_reading_is_stored_once_and_outboxes_empty_only_on_the_hubs_word(
    broker: Broker, collector: Collector, tmp_path: Path
) -> None:
    fleet = _fleet(broker, tmp_path / "lite", 6)
    fleet.start()
    try:
        assert fleet.wait_connected(20) == 6
        wait_for(lambda: sum(s["readings"] for s in fleet.statuses().values()) >= 6 * 60, 20,
                 "readings produced")
    finally:
        assert fleet.stop(flush_timeout=20), "outboxes not emptied by the hub's acknowledgements"
    _every_seq_once(collector, fleet)
    statuses = fleet.statuses()
    assert all(s["outbox_depth"] == 0 and s["drops"] == 0 for s in statuses.values())
    assert all(s["readings_stored"] == fleet.samples_generated()[d]
               for d, s in statuses.items()), "counted as stored from the acknowledgements"
    assert all(s["acks_received"] > 0 and s["bad_messages"] == 0 for s in statuses.values())


def test_what_the_broker_took_before_any_hub_listened_is_sent_again_for_the_hub(
    broker: Broker, tmp_path: Path
) -> None:
    # Devices stream into a broker where nothing is subscribed yet: every PUBACK is real and
    # every message goes nowhere. The hub's first acknowledgements show them missing.
    fleet = _fleet(broker, tmp_path / "lite", 3, ack_timeout_s=1.0)
    fleet.start()
    collector: Collector | None = None
    try:
        assert fleet.wait_connected(20) == 3
        wait_for(lambda: all(s["readings_sent"] >= 20 for s in fleet.statuses().values()), 20,
                 "readings taken by a broker with no subscriber")
        unheard = {d: s["readings_sent"] for d, s in fleet.statuses().items()}
        assert all(s["readings_stored"] == 0 for s in fleet.statuses().values())
        collector = Collector(broker)
        wait_for(lambda: all(s["resent"] > 0 and s["readings_stored"] >= unheard[d]
                             for d, s in fleet.statuses().items()), 30,
                 "the messages nobody heard, sent again and stored")
        assert fleet.stop(flush_timeout=30), "outboxes not emptied by the acknowledgements"
        _every_seq_once(collector, fleet)
    finally:
        if not fleet.stopped:
            fleet.stop(flush_timeout=5)
        if collector is not None:
            collector.close()
