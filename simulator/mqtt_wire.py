"""The few MQTT 5 packets a publish-only QoS 1 client needs, built and parsed with ``struct``.

The ingest bench's load generator stands in for devices that in real life do not share the
hub's machine, so it must cost as little CPU as it can: paho builds objects, locks and a
``Properties`` block for every message, where a publisher that only ever sends QoS 1 PUBLISH
packets and reads PUBACKs can do with bytes. :mod:`simulator.flood_publisher` uses this over
the broker's real TLS socket, with the credential the harness issued it (MQTT 5, so a PUBACK
says when the broker refused a message: an ACL denial is reason code 0x87, not a silent success
as in 3.1.1).
"""

from __future__ import annotations

import struct

__all__ = [
    "PINGREQ",
    "DISCONNECT",
    "ConnackError",
    "WireError",
    "connect_packet",
    "parse_connack",
    "read_packets",
    "reason_text",
    "utf8_string",
    "varint",
]

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"  # normal disconnection, no properties
_PUBACK, _PINGRESP, _DISCONNECT, _CONNACK = 0x40, 0xD0, 0xE0, 0x20
_U16 = struct.Struct("!H")

_REASONS = {
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8D: "keep alive timeout", 0x8E: "session taken over",
    0x90: "topic name invalid", 0x93: "receive maximum exceeded", 0x95: "packet too large",
    0x97: "quota exceeded", 0x99: "payload format invalid", 0x9F: "connection rate exceeded",
}

# Property identifiers of the packets read here, by the size of their value.
_PROP_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_PROP_U16 = {0x13, 0x21, 0x22, 0x23}
_PROP_U32 = {0x02, 0x11, 0x18, 0x27}
_PROP_LEN_PREFIXED = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}
_PROP_PAIR = 0x26
_PROP_VARINT = 0x0B


class WireError(ConnectionError):
    """The broker sent something this client cannot read, or closed the connection."""


class ConnackError(ConnectionError):
    """The broker refused the connection (its reason named)."""


def reason_text(code: int) -> str:
    return f"0x{code:02x} {_REASONS.get(code, 'reason')}"


def varint(n: int) -> bytes:
    """An MQTT variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None when ``data`` ends inside it."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise WireError("malformed variable byte integer from the broker")


def utf8_string(text: str) -> bytes:
    """An MQTT UTF-8 string: two bytes of length, then the bytes."""
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def connect_packet(client_id: str, *, username: str | None, password: str | None,
                   keepalive: int) -> bytes:
    """CONNECT, MQTT 5, clean start, no will, no properties."""
    flags = 0x02
    payload = utf8_string(client_id)
    if username:
        flags |= 0x80
        payload += utf8_string(username)
        if password is not None:
            flags |= 0x40
            payload += utf8_string(password)
    body = utf8_string("MQTT") + bytes([5, flags]) + _U16.pack(keepalive) + b"\x00" + payload
    return b"\x10" + varint(len(body)) + body


def _properties(data: bytes, pos: int, end: int) -> dict[int, int | bytes]:
    props: dict[int, int | bytes] = {}
    while pos < end:
        ident = data[pos]
        pos += 1
        if ident in _PROP_BYTE:
            props[ident], pos = data[pos], pos + 1
        elif ident in _PROP_U16:
            props[ident], pos = _U16.unpack_from(data, pos)[0], pos + 2
        elif ident in _PROP_U32:
            props[ident], pos = struct.unpack_from("!I", data, pos)[0], pos + 4
        elif ident in _PROP_LEN_PREFIXED:
            n = _U16.unpack_from(data, pos)[0]
            props[ident], pos = data[pos + 2:pos + 2 + n], pos + 2 + n
        elif ident == _PROP_PAIR:
            for _ in range(2):
                pos += 2 + _U16.unpack_from(data, pos)[0]
        elif ident == _PROP_VARINT:
            got = _read_varint(data, pos)
            if got is None:
                raise WireError("truncated property")
            props[ident], pos = got
        else:
            raise WireError(f"unknown property 0x{ident:02x} from the broker")
    return props


def parse_connack(first: int, body: bytes) -> dict[int, int | bytes]:
    """The properties of a CONNACK (its first byte and body; e.g. 0x21 Receive Maximum,
    0x13 Server Keep Alive); raises :class:`ConnackError` when the broker refused the
    connection."""
    if first != _CONNACK:
        raise WireError(f"expected CONNACK, got packet type 0x{first:02x}")
    if len(body) < 2:
        raise WireError("truncated CONNACK")
    code = body[1]
    if code >= 0x80:
        raise ConnackError(f"the broker refused the connection: {reason_text(code)}")
    plen = _read_varint(body, 2)
    if plen is None:
        return {}
    return _properties(body, plen[1], plen[1] + plen[0])


def read_packets(buf: bytearray, limit: int = 1 << 30) -> tuple[list[tuple[int, bytes]], int]:
    """Whole packets at the start of ``buf``, at most ``limit``: ([(first byte, body)], bytes
    they took)."""
    packets: list[tuple[int, bytes]] = []
    pos, size = 0, len(buf)
    while pos + 2 <= size and len(packets) < limit:
        got = _read_varint(buf, pos + 1)
        if got is None:
            break
        length, start = got
        if start + length > size:
            break
        packets.append((buf[pos], bytes(buf[start:start + length])))
        pos = start + length
    return packets, pos
