"""The lean client's buffered read (cloud_hub.mqtt.lean): packets come out whole and in order
however the bytes arrive. A fake socket hands the client the bytes in chunks of every size,
so packets split anywhere (in the fixed header, the length, the topic, the payload) and several
in one chunk; the real-broker path is covered by test_ingest."""

from __future__ import annotations

import struct

import pytest
from paho.mqtt.enums import MQTTErrorCode

from cloud_hub.mqtt.client import new_client
from cloud_hub.mqtt.lean import LeanClient, Received


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(topic: str, payload: bytes, *, qos: int, mid: int = 0, retain: bool = False,
             properties: bytes = b"") -> bytes:
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name
    if qos:
        body += struct.pack("!H", mid)
    body += _varint(len(properties)) + properties + payload
    return bytes([0x30 | (qos << 1) | int(retain)]) + _varint(len(body)) + body


class _ChunkedSocket:
    """Hands out ``data`` ``size`` bytes per recv; then would block (or reads as closed)."""

    def __init__(self, data: bytes, size: int, *, close_at_end: bool = False) -> None:
        self.data, self.size, self.close_at_end = data, size, close_at_end
        self.pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self.pos >= len(self.data):
            if self.close_at_end:
                return b""
            raise BlockingIOError
        n = min(bufsize, self.size)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        self.pos = len(self.data)

    def more(self) -> bool:
        return self.pos < len(self.data)


def _client() -> tuple[LeanClient, list[Received]]:
    client = new_client("test-lean", manual_ack=True)
    got: list[Received] = []
    client.on_received = got.append
    return client, got


def _stream() -> tuple[bytes, list[tuple[str, bytes, int, int, bool]]]:
    """QoS 0 and 1 publishes of assorted sizes (one over 127 bytes of length, one over
    16,383: two- and three-byte lengths), with and without properties, and a PINGRESP."""
    expected = []
    data = bytearray()
    sizes = [0, 1, 50, 200, 20_000, 3]
    for i, size in enumerate(sizes):
        topic = f"edgeloop/v1/devices/d-{i}/telemetry"
        payload = bytes((i + k) % 251 for k in range(size))
        qos = i % 2
        props = b"\x01\x01" if i == 2 else b""  # payload format indicator
        data += _publish(topic, payload, qos=qos, mid=1000 + i, retain=i == 3,
                         properties=props)
        expected.append((topic, payload, 1000 + i if qos else 0, qos, i == 3))
        if i == 2:
            data += b"\xd0\x00"  # PINGRESP, handled the stock way
    return bytes(data), expected


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000, 1 << 20])
def test_lean_read_yields_every_packet_whole_however_the_bytes_are_split(chunk: int) -> None:
    data, expected = _stream()
    client, got = _client()
    sock = _ChunkedSocket(data, chunk)
    client._sock = sock  # type: ignore[assignment]
    for _ in range(len(data) + 2):
        rc = client._packet_read()
        assert rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN)
        if not sock.more() and rc == MQTTErrorCode.MQTT_ERR_AGAIN:
            break
    assert [(m.topic, m.payload, m.mid, m.qos, m.retain) for m in got] == expected
    assert client._read_buf == bytearray()  # nothing half-read left behind


def test_lean_read_reports_a_closed_connection_after_the_packets_before_it() -> None:
    data, expected = _stream()
    client, got = _client()
    client._sock = _ChunkedSocket(data, 1 << 20, close_at_end=True)  # type: ignore[assignment]
    assert client._packet_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST
    assert len(got) == len(expected)


def test_lean_read_refuses_a_length_of_more_than_four_bytes() -> None:
    client, got = _client()
    client._sock = _ChunkedSocket(b"\x30\xff\xff\xff\xff\x01" + b"x" * 10,  # type: ignore[assignment]
                                  1 << 20)
    assert client._packet_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert got == []


def test_lean_read_refuses_a_publish_whose_topic_runs_past_its_packet() -> None:
    client, got = _client()
    # remaining length 4, but the topic claims 200 bytes
    client._sock = _ChunkedSocket(b"\x30\x04\x00\xc8ab", 1 << 20)  # type: ignore[assignment]
    assert client._packet_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert got == []


def test_lean_read_drops_bytes_of_a_previous_connection() -> None:
    client, got = _client()
    topic = "edgeloop/v1/devices/d/telemetry"
    whole = _publish(topic, b"payload", qos=1, mid=7)
    client._sock = _ChunkedSocket(whole[:5], 1 << 20)  # type: ignore[assignment]
    assert client._packet_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == []  # half a packet, held
    client._sock = _ChunkedSocket(whole, 1 << 20)  # type: ignore[assignment]  # a new connection
    assert client._packet_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [(m.topic, m.payload, m.mid) for m in got] == [(topic, b"payload", 7)]
