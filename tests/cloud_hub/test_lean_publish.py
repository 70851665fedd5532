"""The lean client's bulk QoS 0 publish (cloud_hub.mqtt.lean): the bytes are exactly those paho
writes for the same messages one by one, in one write; a topic paho would refuse is refused and
nothing is queued; without a connection nothing is sent, and the acknowledgements it would have
carried go out once the connection is back. The real-broker path (retained acknowledgements
that a late subscriber gets) is covered by test_ingest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlmodel import Session

from cloud_hub.db.engine import make_engine
from cloud_hub.db.tables import StreamMark
from cloud_hub.mqtt.acks import AckPublisher
from cloud_hub.mqtt.client import new_client
from cloud_hub.mqtt.lean import LeanClient
from shared.messages import Ack, StreamAck, decode
from shared.topics import Topics

EPOCH = "0123456789abcdef"

MESSAGES = [
    ("edgeloop/v1/devices/pump-1/ack", b'{"v":1}'),
    ("edgeloop/v1/devices/pump-2/ack", b""),  # an empty payload (clears a retained record)
    ("edgeloop/v1/devices/p\u00fcmpe-3/ack", b"x" * 200),  # UTF-8 topic; a 2-byte length
    ("edgeloop/v1/devices/pump-4/ack", bytes(range(256)) * 80),  # 20 KB: a 3-byte length
]


class _Capture:
    """A connected socket that takes every write whole and keeps the bytes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def pending(self) -> int:
        return 0

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def _connected() -> tuple[LeanClient, _Capture]:
    client = new_client("test-lean-publish")
    sock = _Capture()
    client._sock = sock  # type: ignore[assignment]
    return client, sock


@pytest.mark.parametrize("retain", [True, False])
def test_publish_many_writes_what_paho_writes_message_by_message_in_one_write(
        retain: bool) -> None:
    paho, one_by_one = _connected()
    for topic, payload in MESSAGES:
        info = paho.publish(topic, payload, qos=0, retain=retain)
        assert info.rc == 0
    lean, bulk = _connected()
    assert lean.publish_many(MESSAGES, retain=retain) is True
    assert len(one_by_one.writes) == len(MESSAGES)
    assert len(bulk.writes) == 1
    assert bulk.writes[0] == b"".join(one_by_one.writes)


def test_publish_many_refuses_a_wildcard_topic_and_queues_nothing() -> None:
    lean, sock = _connected()
    for bad in ("edgeloop/v1/devices/+/ack", "edgeloop/v1/#", ""):
        with pytest.raises(ValueError, match="cannot publish to topic"):
            lean.publish_many([MESSAGES[0], (bad, b"{}")], retain=True)
    assert sock.writes == []
    assert len(lean._out_packet) == 0


def test_publish_many_without_a_connection_sends_nothing_and_says_so() -> None:
    lean = new_client("test-lean-publish-offline")
    assert lean.publish_many(MESSAGES, retain=True) is False
    assert len(lean._out_packet) == 0
    assert lean.publish_many([], retain=True) is False
    client, sock = _connected()
    assert client.publish_many([], retain=True) is True  # nothing to send: nothing written
    assert sock.writes == []


class _Connection:
    """What AckPublisher needs of HubConnection; ``up`` says whether a write would go out."""

    def __init__(self) -> None:
        self.topics = Topics("edgeloop/v1")
        self.connected = True
        self.up = False
        self.sent: list[list[tuple[str, bytes]]] = []

    def publish_many(self, messages: list[tuple[str, bytes]], *, retain: bool) -> bool:
        assert retain, "acknowledgements are retained"
        if not self.up:
            return False
        self.sent.append(messages)
        return True


def test_acknowledgements_a_lost_connection_did_not_take_are_sent_once_it_is_back(
        tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    with Session(engine) as session:
        for device in ("pump-1", "pump-2"):
            session.add(StreamMark(device_id=device, epoch=EPOCH, stream="telemetry",
                                   watermark=4, top=6, first_seen=1.0, updated_at=1.0))
        session.commit()
    connection = _Connection()
    acks = AckPublisher(engine, connection, interval_s=0.001)  # type: ignore[arg-type]
    acks.touched([("pump-1", EPOCH), ("pump-2", EPOCH)])
    acks._publish_due()  # the connection dropped under it: nothing went out
    assert connection.sent == []
    assert acks.snapshot() == {"acks_published": 0, "ack_bytes": 0, "acks_pending": 2,
                               "ack_errors": 0}
    connection.up = True
    time.sleep(0.01)
    acks._publish_due()
    [messages] = connection.sent
    assert [topic for topic, _ in messages] == [connection.topics.ack("pump-1"),
                                               connection.topics.ack("pump-2")]
    got = [decode(Ack, payload) for _, payload in messages]
    assert [(a.device_id, a.epoch, a.telemetry) for a in got] == [
        ("pump-1", EPOCH, StreamAck(watermark=4, top=6)),
        ("pump-2", EPOCH, StreamAck(watermark=4, top=6))]
    snap = acks.snapshot()
    assert (snap["acks_published"], snap["acks_pending"]) == (2, 0)
    assert snap["ack_bytes"] == sum(len(payload) for _, payload in messages)
    engine.dispose()
