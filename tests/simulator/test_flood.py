"""The bench's light publishers (simulator/flood.py) against a real secure harness broker: what
they report acknowledged is exactly what a subscriber gets, valid telemetry; a refused
credential, refused publishes and a broker that dies are reported, never a count silently short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from shared.messages import TelemetryBatch
from shared.packed import PackedTelemetry, decode_telemetry
from shared.topics import DeviceTopic, TopicAccess
from simulator.broker import Broker
from simulator.flood import FloodPlan, FloodReport, Publishers


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _wait_delivered(subscriber: _Subscriber, report: FloodReport, stall_s: float = 30.0) -> None:
    """Wait until ``subscriber`` has every message ``report`` says the broker acknowledged;
    fail, saying what is missing, once no new message has arrived for ``stall_s``. A stall, not a
    deadline: a loaded machine delivers a large flood slowly, but a lost message never comes."""
    last, last_change = -1, time.monotonic()
    while (n := subscriber.count()) < report.messages:
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            raise AssertionError(f"no delivery for {stall_s:g} s: {subscriber.shortfall(report)}")
        time.sleep(0.05)


@pytest.fixture
def broker() -> Iterator[Broker]:
    with Broker() as b:
        yield b


def _publisher_connects(broker: Broker, n: int, access: TopicAccess | None = None
                        ) -> list[dict[str, Any]]:
    access = access or TopicAccess(
        publish=(broker.topics.all_devices(DeviceTopic.TELEMETRY),), subscribe=())
    out = []
    for i in range(n):
        cred = broker.add_client(f"test-flood-{i}", access)
        out.append({"host": broker.host, "port": broker.port, "client_id": cred.client_id,
                    "username": cred.username, "password": cred.password,
                    "ca_file": str(broker.ca_file)})
    return out


class _Subscriber:
    """Every telemetry message the broker delivers, decoded strictly as the hub would."""

    def __init__(self, broker: Broker) -> None:
        topic = broker.topics.all_devices(DeviceTopic.TELEMETRY)
        cred = broker.add_client("test-flood-sub", TopicAccess(publish=(), subscribe=(topic,)))
        self.got: list[TelemetryBatch] = []
        self.disconnects: list[str] = []  # reason codes: a drop loses what a clean session held
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = broker.client(cred)
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.append(str(rc))
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the subscriber got its subscription"

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        got = decode_telemetry(message.payload)  # JSON or MessagePack, checked strictly
        batch = got.to_batch() if isinstance(got, PackedTelemetry) else got
        assert message.topic.endswith(f"/devices/{batch.device_id}/telemetry")
        with self.lock:
            self.got.append(batch)

    def count(self) -> int:
        with self.lock:
            return len(self.got)

    def shortfall(self, report: FloodReport) -> str:
        """What the broker acknowledged and this subscriber has not got, for a failure."""
        with self.lock:
            seen: dict[str, set[int]] = {}
            for batch in self.got:
                seen.setdefault(batch.device_id, set()).add(batch.seq)
        missing = {d: sorted(set(report.acked_seqs(d)) - seen.get(d, set()))
                   for d in report.acked}
        gaps = {d: (len(s), s[:5]) for d, s in missing.items() if s}
        return (f"got {sum(map(len, seen.values()))} distinct of {report.messages}; missing per "
                f"device (count, first seqs): {gaps}; disconnects: {self.disconnects}; connected: "
                f"{self.client.is_connected()}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _check_accounting(report: FloodReport, plan: FloodPlan) -> None:
    """acked + refused + in doubt is what was sent, per device."""
    for device in plan.device_ids():
        assert (report.acked[device] + len(report.refused.get(device, []))
                + len(report.unconfirmed.get(device, []))) == report.sent[device]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_every_acknowledged_seq_reaches_a_subscriber_as_valid_telemetry(
    broker: Broker, encoding: str
) -> None:
    subscriber = _Subscriber(broker)
    plan = FloodPlan(devices=7, readings=5, channels=3, processes=2, window=50,
                     encoding=encoding)
    publishers = Publishers(plan, _publisher_connects(broker, 2))
    publishers.start()
    # Both processes, each with its share of the devices: under load the second one's first
    # PUBACKs can come after the first one alone has had 3,000 (then its devices sent nothing).
    _wait(lambda: publishers.acknowledged() >= 3000
          and min(publishers.acknowledged_each()) >= 300, 60,
          "3,000 acknowledged publishes, at least 300 from each process")
    report = publishers.stop()
    try:
        assert report.errors == []
        assert report.messages >= 3000 and report.in_doubt == 0
        assert all(report.acked[d] > 0 for d in plan.device_ids()), report.acked
        _check_accounting(report, plan)
        _wait_delivered(subscriber, report)
        got: dict[str, list[int]] = {}
        for batch in subscriber.got:
            assert batch.epoch == report.epochs[batch.device_id]
            assert len(batch.ts) == 5 and len(batch.values[0]) == 3
            assert batch.ts == sorted(batch.ts)
            got.setdefault(batch.device_id, []).append(batch.seq)
        assert set(got) == set(plan.device_ids())
        for device, seqs in got.items():
            assert sorted(seqs) == report.acked_seqs(device) == list(range(report.acked[device]))
    finally:
        subscriber.close()


def test_a_paced_publisher_offers_no_more_than_its_rate(broker: Broker) -> None:
    plan = FloodPlan(devices=3, readings=2, channels=2, rate=200.0)
    publishers = Publishers(plan, _publisher_connects(broker, 1))
    started = time.monotonic()
    publishers.start()
    _wait(lambda: publishers.acknowledged() >= 100, 30, "100 acknowledged publishes")
    publishers.set_rate(0.0)  # then as fast as the broker takes them
    before = publishers.acknowledged()
    _wait(lambda: publishers.acknowledged() >= before + 2000, 30, "an unpaced burst")
    publishers.set_rate(200.0)
    report = publishers.stop()
    elapsed = time.monotonic() - started
    assert report.errors == []
    _check_accounting(report, plan)
    # The upper bound only (a loaded machine is slower, never faster): 200 msg/s while paced.
    assert before <= 200 * elapsed + 50


def test_a_refused_credential_is_reported_at_start(broker: Broker) -> None:
    connect = _publisher_connects(broker, 1)
    connect[0]["password"] = "not-the-password"
    publishers = Publishers(FloodPlan(devices=2), connect)
    with pytest.raises(RuntimeError, match="bad user name or password|not authorized"):
        publishers.start(timeout=30)


def test_publishes_the_broker_refuses_are_reported_not_counted(broker: Broker) -> None:
    # An identity that may publish only somewhere else: mosquitto answers every publish with
    # PUBACK 0x87 (MQTT 5), which the report must show.
    elsewhere = TopicAccess(publish=("edgeloop/v1/elsewhere",), subscribe=())
    plan = FloodPlan(devices=4, readings=2, channels=2)
    publishers = Publishers(plan, _publisher_connects(broker, 1, elsewhere))
    publishers.start()
    _wait(lambda: publishers.sent() >= 500, 30, "500 publishes sent")
    report = publishers.stop()
    assert report.messages == 0
    assert sum(len(v) for v in report.refused.values()) == sum(report.sent.values()) > 0
    assert any("refused a publish" in e and "not authorized" in e for e in report.errors)
    _check_accounting(report, plan)


def test_a_broker_that_dies_is_reported_with_what_was_in_flight(broker: Broker) -> None:
    plan = FloodPlan(devices=5, readings=10, channels=4, processes=1, window=100)
    publishers = Publishers(plan, _publisher_connects(broker, 1))
    publishers.start()
    _wait(lambda: publishers.acknowledged() >= 2000, 30, "2,000 acknowledged publishes")
    broker.kill()
    report = publishers.stop(timeout=60)
    assert any("connection lost" in e for e in report.errors), report.errors
    assert report.messages >= 2000
    _check_accounting(report, plan)
    for device in plan.device_ids():
        seqs = report.acked_seqs(device)
        assert len(seqs) == report.acked[device]
        assert set(seqs).isdisjoint(report.unconfirmed.get(device, []))
