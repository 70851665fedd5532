"""The hub's presence record: a retained HubStatus, online with a fresh session once its
subscriptions are granted, offline as its will and when it stops. Real mosquitto, real Hub."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import MQTTv5
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from cloud_hub.mqtt.connection import HubConnection
from cloud_hub.service import Hub
from shared.messages import DeviceStatus, HubStatus, decode, encode
from shared.topics import Topics
from simulator.broker import Broker
from simulator.netem import LinkProxy
from tests.cloud_hub.conftest import hub_settings
from tests.cloud_hub.helpers import (
    Subscriber,
    enroll_devices,
    publish_wait,
    publisher_client,
    stand_in_training,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.hub]


def _next_status(sub: Subscriber, state: DeviceStatus, *, not_of: tuple[str, ...] = (),
                 timeout: float = 15.0) -> HubStatus:
    """The next presence record in ``state`` the subscriber receives, skipping others and those
    of the sessions ``not_of`` (QoS 1 may deliver a record again: paho resends a birth whose
    PUBACK was lost with the connection)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = sub.messages.get(timeout=left)
        except queue.Empty:
            break
        status = decode(HubStatus, bytes(message.payload))
        if status.state == state and status.session not in not_of:
            return status
    raise AssertionError(f"no {state.value} hub status within {timeout}s")


def _retained_status(broker: Broker, topic: str) -> HubStatus:
    """What a device that subscribes now is told first: the retained record."""
    sub = Subscriber(broker, topic, client_id="test-late-sub")
    try:
        return decode(HubStatus, bytes(sub.messages.get(timeout=10).payload))
    finally:
        sub.close()


@pytest.fixture
def proxy(broker: Broker) -> Iterator[LinkProxy]:
    p = LinkProxy(broker.host, broker.port, name="hub-link")
    yield p
    p.close()


def test_hub_announces_a_new_session_per_connection_and_its_will_follows_it(
    broker: Broker, proxy: LinkProxy, tmp_path: Path
) -> None:
    settings = hub_settings(broker, tmp_path / "hub").model_copy(update={"mqtt_port": proxy.port})
    topic = settings.topics.hub_status(settings.mqtt_client_id)
    sub = Subscriber(broker, topic)
    hub = Hub(settings, run_training=stand_in_training())
    enroll_devices(hub)
    try:
        enroll_devices(hub)
        hub.start()
        first = _next_status(sub, DeviceStatus.ONLINE)
        assert first.device_id == settings.mqtt_client_id
        assert first.session == hub.ingest.session == hub.ingest.snapshot()["session"]

        # The connection drops without a goodbye: the broker publishes the will, which names
        # the session that was lost; the reconnect announces a new one, with a new will.
        proxy.cut()
        assert _next_status(sub, DeviceStatus.OFFLINE).session == first.session
        proxy.restore()
        second = _next_status(sub, DeviceStatus.ONLINE, not_of=(first.session,))
        proxy.cut()
        assert _next_status(sub, DeviceStatus.OFFLINE, not_of=(first.session,)).session \
            == second.session, "the will was set again for the new session"
        proxy.restore()
        third = _next_status(sub, DeviceStatus.ONLINE, not_of=(first.session, second.session))
        assert hub.ingest.snapshot()["births"] == 3

        hub.stop()
        assert _next_status(sub, DeviceStatus.OFFLINE, not_of=(first.session, second.session)) \
            .session == third.session
        retained = _retained_status(broker, topic)
        assert (retained.state, retained.session) == (DeviceStatus.OFFLINE, third.session)
    finally:
        hub.stop()
        sub.close()


def test_telemetry_sent_once_the_hub_is_announced_is_stored(broker: Broker, tmp_path: Path) -> None:
    from tests.cloud_hub.test_ingest import _batch

    settings = hub_settings(broker, tmp_path / "hub")
    sub = Subscriber(broker, settings.topics.hub_status(settings.mqtt_client_id))
    hub = Hub(settings, run_training=stand_in_training())
    device = publisher_client(broker)
    try:
        enroll_devices(hub)
        hub.start()
        _next_status(sub, DeviceStatus.ONLINE)
        publish_wait(device, settings.topics.telemetry("pump-1"), encode(_batch("pump-1", 0)))
        wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == 1, what="batch stored")
        # What a device subscribing now is told, beside the record: the encodings it reads.
        late = Subscriber(broker, settings.topics.hub_status(settings.mqtt_client_id),
                          client_id="test-late-sub", protocol=MQTTv5)
        try:
            record = late.messages.get(timeout=10)
        finally:
            late.close()
        assert decode(HubStatus, bytes(record.payload)).state == DeviceStatus.ONLINE
        assert ("encodings", "json msgpack") in record.properties.UserProperty
    finally:
        device.disconnect()
        device.loop_stop()
        hub.stop()
        sub.close()


class _RecordingClient:
    """Stands in for paho where the SUBACK callback publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.will: tuple[str, bytes, int, bool] | None = None

    def will_set(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.will = (topic, payload, qos, retain)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: object = None) -> None:
        self.published.append((topic, payload, qos, retain))


@pytest.mark.parametrize("refused", [False, True])
def test_hub_announces_itself_only_when_every_subscription_is_granted(refused: bool) -> None:
    # mosquitto's ACL file does not refuse subscriptions (it filters deliveries), so the
    # refusal is handed to the SUBACK callback directly.
    topics = Topics()
    ingest = HubConnection(host="127.0.0.1", port=1, topics=topics, client_id="hub-a",
                           subscriptions=[(topics.all_devices("telemetry"), 1)])
    client = _RecordingClient()
    ingest._on_pre_connect(client, None)  # type: ignore[arg-type]
    assert client.will is not None
    will = decode(HubStatus, client.will[1])
    assert (will.state, will.session) == (DeviceStatus.OFFLINE, ingest.session)
    ingest._subscribe_mid = 7
    codes = [ReasonCode(PacketTypes.SUBACK, identifier=1),
             ReasonCode(PacketTypes.SUBACK, identifier=0x87 if refused else 1)]
    ingest._on_subscribe(client, None, 8, codes, None)  # type: ignore[arg-type]
    assert client.published == [], "the SUBACK of another subscription is not the hub's"
    ingest._on_subscribe(client, None, 7, codes, None)  # type: ignore[arg-type]
    stats = ingest.snapshot()
    if refused:
        assert client.published == []
        assert (stats["subscribe_refusals"], stats["births"]) == (1, 0)
    else:
        [(topic, payload, qos, retain)] = client.published
        status = decode(HubStatus, payload)
        assert (topic, qos, retain) == (topics.hub_status("hub-a"), 1, True)
        assert (status.state, status.session) == (DeviceStatus.ONLINE, ingest.session)
        assert (stats["subscribe_refusals"], stats["births"]) == (0, 1)


def test_a_hub_started_with_the_broker_down_serves_its_api_and_connects_later(
    broker: Broker, tmp_path: Path
) -> None:
    from cloud_hub.cli.serve import serve_in_thread
    from tests.cloud_hub.test_ingest import _batch

    broker.stop()
    settings = hub_settings(broker, tmp_path / "hub")
    hub = Hub(settings, run_training=stand_in_training())
    enroll_devices(hub)
    server = serve_in_thread(hub, timeout=2.0)  # does not raise: the hub waits for its broker
    try:
        import httpx

        health = httpx.get(f"{server.base_url}/api/v1/health").json()
        assert health == {"status": "degraded", "mqtt_connected": False, "database": "ok"}
        assert "cannot reach the MQTT broker" in (hub.ingest.snapshot()["mqtt_error"] or "")
        broker.start()
        wait_for(lambda: httpx.get(f"{server.base_url}/api/v1/health").json()["status"] == "ok",
                 timeout=30, what="the hub connecting once the broker is up")
        wait_for(lambda: hub.ingest.snapshot()["births"] == 1, what="subscriptions granted")
        device = publisher_client(broker)
        try:
            publish_wait(device, settings.topics.telemetry("pump-1"),
                         encode(_batch("pump-1", 0)))
        finally:
            device.disconnect()
            device.loop_stop()
        wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == 1, what="batch stored")
    finally:
        server.stop()


@pytest.mark.integration
def test_a_hub_without_the_brokers_tls_says_why_it_cannot_connect(broker: Broker) -> None:
    """A secure broker closes a plain connection before any CONNACK; the hub keeps retrying
    and its error says what to check, instead of a bare "Unspecified error"."""
    topics = Topics()
    ingest = HubConnection(host=broker.host, port=broker.port, topics=topics,
                           client_id="hub-plain", subscriptions=[])
    ingest.start()
    try:
        wait_for(lambda: "closed the connection before accepting it" in (
            ingest.snapshot()["mqtt_error"] or ""), 30, "the hub naming the refused connection")
        assert not ingest.connected
        assert "EDGELOOP_MQTT_TLS" in ingest.snapshot()["mqtt_error"]
    finally:
        ingest.stop()
