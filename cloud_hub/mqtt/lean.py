"""A paho client that hands received messages on cheaply and acknowledges them in bulk.

Profiling the hub under a telemetry flood (bench/ingest.py) showed paho's receive path costing
more than decoding and storing: for every PUBLISH paho 2.x builds an ``MQTTMessage`` (with a
``threading.Condition`` inside) and, with MQTT 5, a ``Properties`` object whose constructor
fills several dictionaries (about 10 us each time), then sends each PUBACK as a packet of its
own, waking its loop through a socket pair every time. And it reads one packet per ``select``,
in three or more ``recv`` calls (the command byte, the length one byte at a time, the rest),
each through the TLS layer. :class:`LeanClient` reads what the socket has in large chunks into
a buffer and handles every complete packet in it (:meth:`LeanClient._packet_read`), with TLS
through memory BIOs (:mod:`.tls_stream`: one system call brings many records); turns a
PUBLISH (QoS 0 and 1; QoS 2 goes the stock way) into a :class:`Received` with the fields ingest
uses, skipping the properties block; and :meth:`LeanClient.ack_many` queues the PUBACKs of a
whole commit as one write. Sending is as dear: a QoS 0 ``publish`` builds an
``MQTTMessageInfo`` (another ``Condition``), wakes the loop through the socket pair and is
written alone, one TLS record each. With 10,000 devices sending about once a second, the hub
publishes an acknowledgement per message, and that path took two thirds as much of the hub
as ingest's own thread (docs/ingest-measurements.md); :meth:`LeanClient.publish_many` queues
a round's worth as one write.

A PINGRESP late while the broker keeps sending does not close the connection
(:meth:`LeanClient.loop_misc`). Under an overload, with a million messages queued for the hub,
mosquitto answered the hub's PINGREQ 10-25 s late (and now and then over the 30-s keep-alive) while
its messages kept arriving without a pause; paho then closed a working connection, and the
broker sent the hub's unacknowledged messages (12,000) again on the next one. A connection
on which bytes arrive is alive: the keep-alive is for one that has gone quiet.

Everything here depends on paho 2.x internals (``_in_packet``, ``_packet_handle``,
``_packet_queue``, ``_sock_recv``, ``_ssl_wrap_socket``, ``_packet_write``); the project pins
paho below 3, and the ingest tests exercise this path against a real broker.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from cloud_hub.mqtt.tls_stream import BufferedTLS

__all__ = ["LeanClient", "Received"]

log = logging.getLogger(__name__)

_PUBACK = 0x40
_PUBACK_PACKET = struct.Struct("!BBH")
_PUBLISH = 0x30
_READ_CHUNK = 1 << 16  # bytes asked of the socket per recv
_READ_MAX = 1 << 20  # bytes read per call before the packets in them are handled


def _in_packet(command: int = 0, packet: bytearray | None = None, length: int = 0) -> Any:
    """paho's record of the packet being handled (a TypedDict inside paho)."""
    return {"command": command, "have_remaining": int(packet is not None),
            "remaining_count": [], "remaining_mult": 1, "remaining_length": length,
            "packet": bytearray() if packet is None else packet, "to_process": 0, "pos": 0}


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
    late_pingresps = 0  # PINGRESPs a keep-alive late, forgiven as the broker was sending
    _heard_at = 0.0  # when bytes last came from the broker (paho's own mark is also reset
    # when a PINGREQ goes out, whether anything came or not)
    _read_sock: object = None  # the socket ``_read_buf`` holds bytes of
    _read_buf: bytearray

    def _packet_read(self) -> MQTTErrorCode:
        """Read what the socket has (up to ``_READ_MAX``) and handle every complete packet;
        a partial one stays in the buffer for the next call. Replaces paho's one packet per
        call, read in pieces."""
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if sock is not self._read_sock:  # a new connection: bytes of the old one are void
            self._read_sock, self._read_buf = sock, bytearray()
        buf = self._read_buf
        got = 0
        closed = False
        while got < _READ_MAX:
            try:
                data = self._sock_recv(_READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if not data:
                closed = True
                break
            buf += data
            got += len(data)
        if got:
            now = mqtt.time_func()
            with self._msgtime_mutex:
                self._last_bytes_received = now
            self._heard_at = now
        rc = self._handle_buffered(sock, buf)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return rc
        if closed:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        return MQTTErrorCode.MQTT_ERR_SUCCESS if got else MQTTErrorCode.MQTT_ERR_AGAIN

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> Any:
        """TLS through :class:`BufferedTLS` (large reads, many records decrypted per call)
        where the context checks the host name itself; paho's own ``SSLSocket`` otherwise."""
        context = self._ssl_context
        if context is None or not context.check_hostname or self._transport != "tcp":
            return super()._ssl_wrap_socket(tcp_sock)
        return BufferedTLS.connect(tcp_sock, context, self._host)  # within connect_timeout

    def want_write(self) -> bool:
        """paho's, and also while TLS records made earlier wait for the socket."""
        sock = self._sock
        return super().want_write() or (isinstance(sock, BufferedTLS) and bool(sock.unsent))

    def _packet_write(self) -> MQTTErrorCode:
        sock = self._sock
        if isinstance(sock, BufferedTLS) and sock.unsent:
            try:
                if not sock.flush():
                    return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
        return super()._packet_write()

    def loop_misc(self) -> MQTTErrorCode:
        """paho's, but a PINGRESP still awaited a keep-alive after its PINGREQ does not close
        a connection on which bytes came from the broker within that keep-alive: the broker
        is there, and answers late (mosquitto, with a million messages queued for the hub,
        took up to 25 s; where it waits is not known). The wait is dropped, and paho sends
        the next PINGREQ when its keep-alive comes round. A connection that has gone quiet
        still closes a keep-alive after its PINGREQ, as in paho.

        paho 2.x checks the wait twice, and the two checks disagree: ``_check_keepalive``
        sends another PINGREQ while bytes arrive, but ``loop_misc`` closes the connection if
        it runs in the few microseconds between the keep-alive's end measured from the last
        write and from the PINGREQ, which a hub whose loop turns thousands of times a second
        hits now and then (the bench's overload: once in six runs on one host)."""
        waited_since = self._ping_t
        if waited_since > 0 and self._sock is not None:
            now = mqtt.time_func()
            if now - waited_since >= self._keepalive and now - self._heard_at < self._keepalive:
                self._ping_t = 0.0
                self.late_pingresps += 1
                log.info("mqtt: no PINGRESP %.0f s after the PINGREQ, but the broker sent "
                         "%.1f s ago: the connection is kept", now - waited_since,
                         now - self._heard_at)
        return super().loop_misc()

    def _handle_buffered(self, sock: object, buf: bytearray) -> MQTTErrorCode:
        """Handle the complete packets at the start of ``buf`` and remove them from it."""
        pos, end_of_data = 0, len(buf)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while pos + 2 <= end_of_data:
            header = buf[pos]
            length, mult, i = 0, 1, pos + 1
            while True:
                if i >= end_of_data:
                    length = -1  # the length itself is not all here yet
                    break
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                if not byte & 0x80:
                    break
                mult *= 128
                if i - pos > 4:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
            if length < 0 or i + length > end_of_data:
                break
            end = i + length
            pos = end
            if header & 0xF0 == _PUBLISH and (header & 0x06) >> 1 <= 1 \
                    and self.on_received is not None:
                rc = self._publish(header, buf, i, end)
            else:
                rc = self._handle_one(header, bytearray(buf[i:end]), length)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is not sock:
                break
        del buf[:pos]
        return rc

    def _handle_one(self, header: int, packet: bytearray, length: int) -> MQTTErrorCode:
        """Any other packet, the stock way (paho's handlers read ``_in_packet``)."""
        self._in_packet = _in_packet(header, packet, length)
        try:
            rc: MQTTErrorCode = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = _in_packet()
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        if (header & 0x06) >> 1 > 1 or self.on_received is None:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        return self._publish(header, packet, 0, len(packet))

    def _publish(self, header: int, data: bytearray, start: int, end: int) -> MQTTErrorCode:
        """A QoS 0 or 1 PUBLISH whose variable header and payload are ``data[start:end]``."""
        handler = self.on_received
        assert handler is not None
        qos = (header & 0x06) >> 1
        try:
            length = (data[start] << 8) | data[start + 1]
            pos = start + 2 + length
            if pos > end:
                raise IndexError("topic beyond the packet")
            topic = bytes(data[start + 2:pos]).decode("utf-8", errors="replace")
            mid = 0
            if qos:
                mid = (data[pos] << 8) | data[pos + 1]
                pos += 2
            if self._protocol == mqtt.MQTTv5:
                size, took = _varint(data, pos)
                pos += took + size
            if pos > end:
                raise IndexError("properties beyond the packet")
            payload = bytes(data[pos:end])
        except (IndexError, ValueError):
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        handler(Received(topic, payload, mid, qos, bool(header & 0x01), self.generation))
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_many(self, messages: Iterable[tuple[str, bytes]], *, retain: bool) -> bool:
        """QoS 0 PUBLISH packets for every (topic, payload), queued as one write: the bytes
        paho's ``publish(topic, payload, qos=0, retain=retain)`` sends for each, in order.
        False when there is no connection (nothing is queued, as paho drops a QoS 0 message
        then); raises ValueError for a topic paho would refuse."""
        if self._sock is None:
            return False
        first = _PUBLISH | int(retain)
        no_properties = b"\x00" if self._protocol == mqtt.MQTTv5 else b""
        packet = bytearray()  # built with paho's own packers, as its _send_publish does
        for topic, payload in messages:
            name = topic.encode("utf-8")
            if not name or b"+" in name or b"#" in name or len(name) > 65535:
                raise ValueError(f"cannot publish to topic {topic!r}")
            packet.append(first)
            self._pack_remaining_length(
                packet, 2 + len(name) + len(no_properties) + len(payload))
            self._pack_str16(packet, name)
            packet += no_properties
            packet += payload
        if packet:
            self._packet_queue(_PUBLISH, packet, 0, 0, mqtt.MQTTMessageInfo(0))
        return True

    def ack_many(self, mids: Iterable[int]) -> int:
        """PUBACK every mid in one write (QoS 1 messages received with ``manual_ack``)."""
        data = b"".join(_PUBACK_PACKET.pack(_PUBACK, 2, mid) for mid in mids)
        if not data:
            return 0
        self._packet_queue(_PUBACK, data, 0, 0)
        return len(data) // _PUBACK_PACKET.size
