"""A paho client that hands received messages on cheaply and acknowledges them in bulk.

Profiling the hub under a telemetry flood (bench/ingest.py) showed paho's receive path costing
more than decoding and storing: for every PUBLISH paho 2.x builds an ``MQTTMessage`` (with a
``threading.Condition`` inside) and, with MQTT 5, a ``Properties`` object whose constructor
fills several dictionaries (about 10 us each time), then sends each PUBACK as a packet of its
own, waking its loop through a socket pair every time. :class:`LeanClient` overrides the one
method that turns a PUBLISH into a message (QoS 0 and 1; QoS 2 goes the stock way) to build a
:class:`Received` with the fields ingest uses, skipping the properties block, and
:meth:`LeanClient.ack_many` queues the PUBACKs of a whole commit as one write.

Everything here depends on paho 2.x internals (``_in_packet``, ``_packet_queue``); the project
pins paho below 3, and the ingest tests exercise this path against a real broker.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["LeanClient", "Received"]

_PUBACK = 0x40
_PUBACK_PACKET = struct.Struct("!BBH")


class Received:
    """One message as ingest needs it; ``generation`` names the connection it came on."""

    __slots__ = ("generation", "mid", "payload", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, mid: int, qos: int, retain: bool,
                 generation: int) -> None:
        self.topic = topic
        self.payload = payload
        self.mid = mid
        self.qos = qos
        self.retain = retain
        self.generation = generation


def _varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``pos``: (value, bytes it took)."""
    value = 0
    mult = 1
    for i in range(4):
        byte = data[pos + i]
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, i + 1
        mult *= 128
    raise ValueError("malformed variable byte integer")


class LeanClient(mqtt.Client):
    """paho's client with a cheap receive path for ``on_received`` and bulk PUBACKs."""

    on_received: Callable[[Received], None] | None = None
    generation = 0  # bumped by the owner on every (re)connect

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        handler = self.on_received
        if handler is None or qos > 1:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            length = (packet[0] << 8) | packet[1]
            pos = 2 + length
            topic = bytes(packet[2:pos]).decode("utf-8", errors="replace")
            mid = 0
            if qos:
                mid = (packet[pos] << 8) | packet[pos + 1]
                pos += 2
            if self._protocol == mqtt.MQTTv5:
                size, took = _varint(packet, pos)
                pos += took + size
            payload = bytes(packet[pos:])
        except (IndexError, ValueError):
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        handler(Received(topic, payload, mid, qos, bool(header & 0x01), self.generation))
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Iterable[int]) -> int:
        """PUBACK every mid in one write (QoS 1 messages received with ``manual_ack``)."""
        data = b"".join(_PUBACK_PACKET.pack(_PUBACK, 2, mid) for mid in mids)
        if not data:
            return 0
        self._packet_queue(_PUBACK, data, 0, 0)
        return len(data) // _PUBACK_PACKET.size
