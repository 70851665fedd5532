"""The secure broker refuses what the issue lists, with a real mosquitto (TLS, per-identity
passwords, roles and client-id bindings in the dynamic-security plugin)."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from shared.topics import BROKER_STATS, Topics
from simulator.broker import Broker, Credential

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class Probe:
    """One MQTT v5 client and what the broker told it (CONNACK, PUBACK and SUBACK codes)."""

    def __init__(self, broker: Broker, credential: Credential | None, *,
                 client_id: str | None = None) -> None:
        self.connack: str | None = None
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.disconnects: queue.Queue[str] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._acks: dict[int, str] = {}
        self._acked = threading.Condition()
        self.client = broker.client(credential, client_id=client_id)
        self.client.reconnect_delay_set(60, 60)  # a refused probe must not retry meanwhile
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(str(rc))
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_suback
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        assert self.answered.wait(10), "the broker answered the CONNECT"

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connack = str(rc)
        if not rc.is_failure:
            self.connected.set()
        self.answered.set()

    def _on_ack(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._acked:
            self._acks[mid] = str(rc)
            self._acked.notify_all()

    def _on_suback(self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[Any], _p: Any) -> None:
        with self._acked:
            self._acks[mid] = ",".join(str(r) for r in rcs)
            self._acked.notify_all()

    def _wait_ack(self, mid: int) -> str:
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._acks, 10), f"no ack for {mid}"
            return self._acks[mid]

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False) -> str:
        """The broker's PUBACK reason for a QoS 1 publish."""
        return self._wait_ack(self.client.publish(topic, payload, qos=1, retain=retain).mid)

    def subscribe(self, topic: str) -> str:
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return self._wait_ack(mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes() -> Any:
    made: list[Probe] = []
    yield made
    for p in made:
        p.close()


def _probe(probes: list[Probe], broker: Broker, credential: Credential | None,
           client_id: str | None = None) -> Probe:
    p = Probe(broker, credential, client_id=client_id)
    probes.append(p)
    return p


def _hub_listens(probes: list[Probe], broker: Broker, topics: Topics) -> Probe:
    hub = _probe(probes, broker, broker.add_hub("edgeloop-hub"))
    assert hub.connected.is_set(), hub.connack
    for pattern in (f"{topics.prefix}/devices/#", f"{topics.prefix}/models/#",
                    topics.all_trust(), topics.all_hub_status()):
        assert hub.subscribe(pattern) == "Granted QoS 1"
    return hub


def test_the_hub_reads_the_brokers_figures(broker: Broker, probes: list[Probe]) -> None:
    hub = _probe(probes, broker, broker.add_hub("edgeloop-hub"))
    assert hub.connected.is_set(), hub.connack
    assert hub.subscribe(BROKER_STATS) == "Granted QoS 1"
    topic, payload = hub.messages.get(timeout=10)
    assert topic.startswith("$SYS/broker/") and payload, (topic, payload)


def test_no_anonymous_client_and_no_plain_tcp(broker: Broker, probes: list[Probe]) -> None:
    anonymous = _probe(probes, broker, None, client_id="nobody")
    assert anonymous.connack == "Not authorized"
    wrong = Credential("pump-001", "not-the-password", "pump-001")
    broker.add_device("pump-001")
    assert _probe(probes, broker, wrong).connack == "Not authorized"
    # The listener speaks TLS only: a plain MQTT CONNECT gets no CONNACK.
    with socket.create_connection((broker.host, broker.port), timeout=5) as raw:
        raw.sendall(bytes.fromhex("101000044d5154540402003c0004746573740000"))
        raw.settimeout(5)
        try:
            answer = raw.recv(16)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"\x20"), "a plain-TCP client got a CONNACK"
    # ... and a TLS client that does not trust the broker's CA cannot even get that far.
    context = ssl.create_default_context()
    with socket.create_connection((broker.host, broker.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname=broker.host)


def test_a_device_cannot_impersonate_another(broker: Broker, probes: list[Probe]) -> None:
    topics = broker.topics
    hub = _hub_listens(probes, broker, topics)
    creds = broker.add_devices(["pump-001", "pump-002"])
    attacker = _probe(probes, broker, creds["pump-001"])
    assert attacker.connected.is_set()
    for stream in (topics.telemetry("pump-002"), topics.anomalies("pump-002"),
                   topics.status("pump-002"), topics.reported("pump-002")):
        assert attacker.publish(stream) == "Not authorized", stream
    assert attacker.publish(topics.telemetry("pump-001"), b"own") == "Success"
    assert hub.messages.get(timeout=10) == (topics.telemetry("pump-001"), b"own")
    assert hub.messages.empty(), "a forged message reached the hub"


def test_a_device_cannot_write_desired_models_trust_or_hub_status(
    broker: Broker, probes: list[Probe]
) -> None:
    topics = broker.topics
    hub = _hub_listens(probes, broker, topics)
    device = _probe(probes, broker, broker.add_device("pump-001"))
    for topic in (topics.desired("pump-001"), topics.desired("pump-002"),
                  topics.manifest("pump-ae", 9), topics.chunk("pump-ae", 9, 0),
                  topics.trust(2), topics.hub_status("edgeloop-hub"),
                  topics.hub_status("pump-001"), "$CONTROL/dynamic-security/v1"):
        assert device.publish(topic, b"forged", retain=True) == "Not authorized", topic
    assert device.publish(topics.telemetry("pump-001"), b"marker") == "Success"
    assert hub.messages.get(timeout=10) == (topics.telemetry("pump-001"), b"marker")
    assert hub.messages.empty(), "something the device may not write reached the hub"


def test_a_device_reads_only_its_own_desired_the_models_and_hub_status(
    broker: Broker, probes: list[Probe]
) -> None:
    topics = broker.topics
    device = _probe(probes, broker, broker.add_device("pump-001"))
    assert device.subscribe(topics.desired("pump-001")) == "Granted QoS 1"
    assert device.subscribe(topics.chunks_filter("pump-ae", 3)) == "Granted QoS 1"
    assert device.subscribe(topics.all_hub_status()) == "Granted QoS 1"
    for refused in (topics.desired("pump-002"), topics.telemetry("pump-002"),
                    f"{topics.prefix}/devices/+/desired", "#", "$CONTROL/#", "$SYS/#",
                    BROKER_STATS):  # the broker's figures are the hubs' only
        assert device.subscribe(refused) == "Not authorized", refused


def test_client_id_takeover_of_the_hub_and_of_a_device_is_refused(
    broker: Broker, probes: list[Probe]
) -> None:
    topics = broker.topics
    hub = _hub_listens(probes, broker, topics)
    creds = broker.add_devices(["pump-001", "pump-002"])
    victim = _probe(probes, broker, creds["pump-001"])
    assert victim.connected.is_set()
    as_hub = _probe(probes, broker, creds["pump-002"], client_id="edgeloop-hub")
    as_device = _probe(probes, broker, creds["pump-002"], client_id="pump-001")
    anonymous_as_hub = _probe(probes, broker, None, client_id="edgeloop-hub")
    assert as_hub.connack == "Not authorized"
    assert as_device.connack == "Not authorized"
    assert anonymous_as_hub.connack == "Not authorized"
    # Neither session was thrown away: both still publish and receive.
    assert victim.publish(topics.telemetry("pump-001"), b"still here") == "Success"
    assert hub.messages.get(timeout=10) == (topics.telemetry("pump-001"), b"still here")
    assert hub.disconnects.empty() and victim.disconnects.empty()


def test_the_acl_follows_a_non_default_topic_prefix(probes: list[Probe]) -> None:
    topics = Topics("acme/plant-7")
    with Broker(topics=topics) as broker:
        hub = _hub_listens(probes, broker, topics)
        device = _probe(probes, broker, broker.add_device("press-1"))
        assert device.publish(topics.telemetry("press-1"), b"ok") == "Success"
        assert device.publish(Topics().telemetry("press-1")) == "Not authorized"
        assert device.publish(topics.desired("press-1")) == "Not authorized"
        assert device.subscribe(topics.desired("press-1")) == "Granted QoS 1"
        assert device.subscribe(Topics().desired("press-1")) == "Not authorized"
        assert hub.messages.get(timeout=10) == (topics.telemetry("press-1"), b"ok")
        for p in probes:
            p.close()
        probes.clear()


def test_a_revoked_device_is_disconnected_and_refused(broker: Broker, probes: list[Probe]) -> None:
    device = _probe(probes, broker, broker.add_device("pump-001"))
    credential = broker.add_device("pump-001")
    assert device.connected.is_set()
    broker.revoke("pump-001")
    assert device.disconnects.get(timeout=10)  # kicked at once, not at its next connect
    again = _probe(probes, broker, credential)
    assert again.connack == "Not authorized"


def test_no_configuration_an_operator_is_told_to_use_allows_anonymous_clients() -> None:
    for path in [REPO / "mosquitto.conf", *sorted((REPO / "deploy").glob("*.conf"))]:
        settings = [line.split() for line in path.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
        anonymous = [s for s in settings if s[0] == "allow_anonymous"]
        assert anonymous and all(s[1] == "false" for s in anonymous), path
