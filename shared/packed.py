"""Telemetry in MessagePack with its numbers as raw float64: the compact encoding beside JSON.

A telemetry batch in JSON spells every value out in decimal: 10 readings of 8 channels are
about 1,900 bytes, and the hub parses 90 numbers into Python floats only to pack them back
into the float64 bytes it stores (profiled: about 30% of a hub's CPU at 10 readings per
message, with the TLS decryption of the text another 11%). :class:`PackedTelemetry` is the same
message (the same fields, names and checks) encoded as a MessagePack map whose ``ts`` and
``values`` are binary: little-endian float64, ``values`` row after row. The same batch is about
900 bytes, and the hub stores those bytes as they came, after one vectorised finiteness check.

Which encoding a payload is needs no header: a JSON message is an object, so its first byte
is ``{`` (or whitespace), and a MessagePack map starts with 0x80-0x8f, 0xde or 0xdf. Hubs of this
build accept both on the telemetry topic, message by message (:func:`decode_telemetry`), and say
so on their retained presence record, in the MQTT 5 user property :data:`ENCODINGS_PROPERTY`.
An agent with ``[telemetry] encoding = "auto"`` (the default) sends MessagePack while every hub
it hears online announces it, and JSON otherwise (no hub heard yet, or one of an earlier
build); ``"json"`` and ``"msgpack"`` fix the choice. Only telemetry has the compact form: it is
the bulk of the traffic; the other messages are small and stay JSON.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from itertools import chain
from typing import Annotated, Any

import msgspec
import numpy as np

from shared.messages import (
    MAX_BATCH_ROWS,
    MAX_CHANNELS,
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    ChannelName,
    Epoch,
    MessageError,
    Seq,
    TelemetryBatch,
    VersionProbe,
    WireMessage,
    check_floor,
    check_version,
    describe_error,
)

__all__ = ["ENCODINGS", "ENCODINGS_PROPERTY", "PackedTelemetry", "Telemetry", "decode_packed",
           "decode_telemetry", "encode_telemetry", "is_msgpack", "pack_doubles", "timestamps",
           "with_floor_packed"]

ENCODINGS = ("json", "msgpack")
# MQTT 5 user property on a hub's retained presence record naming the telemetry encodings it
# reads (space-separated). A user property, not a field: agents of earlier builds decode the
# record strictly and would refuse a new field, but ignore properties.
ENCODINGS_PROPERTY = "encodings"
_DOUBLE = 8
_MAP_HEADS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


@functools.lru_cache(maxsize=256)
def _doubles(n: int) -> struct.Struct:
    """The packer of ``n`` little-endian float64 (parsed once per count, not per call)."""
    return struct.Struct(f"<{n}d")


def pack_doubles(values: Sequence[float] | Sequence[Sequence[float]]) -> bytes:
    """Little-endian float64, row after row (how telemetry rows hold ts and values)."""
    first = values[0] if len(values) else None
    if isinstance(first, list | tuple):
        rows: Any = values
        return _doubles(len(rows) * len(first)).pack(*chain.from_iterable(rows))
    return _doubles(len(values)).pack(*values)


class PackedTelemetry(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A :class:`~shared.messages.TelemetryBatch` whose ``ts`` and ``values`` are float64
    bytes (little-endian; ``values`` row-major, ``len(channels)`` per row)."""

    epoch: Epoch
    seq: Seq
    floor: Seq = 0
    channels: Annotated[list[ChannelName], msgspec.Meta(min_length=1, max_length=MAX_CHANNELS)]
    ts: Annotated[bytes, msgspec.Meta(min_length=_DOUBLE, max_length=MAX_BATCH_ROWS * _DOUBLE)]
    values: Annotated[bytes, msgspec.Meta(
        min_length=_DOUBLE, max_length=MAX_BATCH_ROWS * MAX_CHANNELS * _DOUBLE)]

    def __post_init__(self) -> None:
        if type(self.v) is not int or self.v != SCHEMA_VERSION:
            check_version(self.v, SCHEMA_VERSION, "schema version")
        if self.floor > self.seq:
            check_floor(self.floor, self.seq)
        width = len(self.channels)
        if len(set(self.channels)) != width:
            raise ValueError(f"channels {self.channels} contain duplicates")
        if len(self.ts) % _DOUBLE:
            raise ValueError(f"ts has {len(self.ts)} bytes, not a whole number of float64")
        rows = len(self.ts) // _DOUBLE
        if len(self.values) != rows * width * _DOUBLE:
            raise ValueError(f"values has {len(self.values)} bytes; {rows} rows of {width} "
                             f"channels are {rows * width * _DOUBLE}")
        ts = np.frombuffer(self.ts, dtype="<f8")
        if not (np.isfinite(ts).all() and (ts >= 0).all()):
            raise ValueError("ts: every timestamp must be a finite number of seconds >= 0")
        if not np.isfinite(np.frombuffer(self.values, dtype="<f8")).all():
            raise ValueError("values: every value must be finite")

    @property
    def readings(self) -> int:
        return len(self.ts) // _DOUBLE

    def ts_list(self) -> list[float]:
        return list(_doubles(self.readings).unpack(self.ts))

    def to_batch(self) -> TelemetryBatch:
        """The same message with lists of floats (what code reading values wants)."""
        width = len(self.channels)
        flat = _doubles(self.readings * width).unpack(self.values)
        return TelemetryBatch(
            v=self.v, device_id=self.device_id, epoch=self.epoch, seq=self.seq,
            floor=self.floor, channels=list(self.channels), ts=self.ts_list(),
            values=[list(flat[i:i + width]) for i in range(0, len(flat), width)])

    @classmethod
    def of(cls, batch: TelemetryBatch) -> PackedTelemetry:
        return cls(v=batch.v, device_id=batch.device_id, epoch=batch.epoch, seq=batch.seq,
                   floor=batch.floor, channels=list(batch.channels),
                   ts=pack_doubles(batch.ts), values=pack_doubles(batch.values))


Telemetry = TelemetryBatch | PackedTelemetry  # a decoded telemetry message, either encoding


def timestamps(t: Telemetry) -> Sequence[float]:
    """A telemetry message's ``ts`` as numbers, whichever its encoding."""
    return t.ts_list() if isinstance(t, PackedTelemetry) else t.ts


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(PackedTelemetry)


def is_msgpack(payload: bytes) -> bool:
    """The payload is a MessagePack map (a JSON message starts with ``{`` or whitespace)."""
    return bool(payload) and payload[0] in _MAP_HEADS


def encode_telemetry(batch: TelemetryBatch, encoding: str = "json") -> bytes:
    """``batch`` as a payload in ``encoding`` (one of :data:`ENCODINGS`)."""
    if encoding == "msgpack":
        return _ENCODER.encode(PackedTelemetry.of(batch))
    if encoding == "json":
        return msgspec.json.encode(batch)
    raise ValueError(f"unknown telemetry encoding {encoding!r}; one of {', '.join(ENCODINGS)}")


def decode_telemetry(payload: bytes) -> TelemetryBatch | PackedTelemetry:
    """A telemetry payload in either encoding, or :class:`MessageError` saying why not."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(f"TelemetryBatch: payload of {len(payload)} bytes exceeds the "
                           f"limit of {MAX_PAYLOAD_BYTES}")
    if not is_msgpack(payload):
        from shared.messages import decode

        return decode(TelemetryBatch, payload)
    return decode_packed(payload)


def decode_packed(payload: bytes) -> PackedTelemetry:
    try:
        return _DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        try:
            v = msgspec.msgpack.decode(payload, type=VersionProbe).v
            check_version(v, SCHEMA_VERSION, "schema version")
        except ValueError as bad_version:
            raise MessageError(f"TelemetryBatch (msgpack): {bad_version}") from None
        except msgspec.MsgspecError:
            pass
        raise MessageError(f"TelemetryBatch (msgpack): {describe_error(exc)}") from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"TelemetryBatch (msgpack): invalid MessagePack: {exc}") from None


def with_floor_packed(payload: bytes, floor: int) -> bytes:
    """:func:`shared.messages.with_floor` for a MessagePack payload."""
    fields = msgspec.msgpack.decode(payload, type=dict[str, msgspec.Raw])
    fields["floor"] = msgspec.Raw(_ENCODER.encode(int(floor)))
    return _ENCODER.encode(fields)
