"""Telemetry in MessagePack (shared/packed.py): the same message as JSON, in fewer bytes, and
every bad payload refused saying what is wrong."""

from __future__ import annotations

import math
import struct

import msgspec
import pytest

from shared.messages import MAX_PAYLOAD_BYTES, MessageError, TelemetryBatch, with_floor
from shared.packed import (
    PackedTelemetry,
    decode_telemetry,
    encode_telemetry,
    is_msgpack,
)

EPOCH = "0123456789abcdef"


def _batch(rows: int = 10, width: int = 8, seq: int = 3) -> TelemetryBatch:
    return TelemetryBatch(
        device_id="pump-1", epoch=EPOCH, seq=seq, channels=[f"ch{i}" for i in range(width)],
        ts=[1_700_000_000.0 + 0.1 * i for i in range(rows)],
        values=[[math.sin(i * width + j) * 1e3 for j in range(width)] for i in range(rows)])


def _fields(batch: TelemetryBatch) -> dict[str, object]:
    """The MessagePack map of ``batch`` as plain data, to spoil one field at a time."""
    data: dict[str, object] = msgspec.msgpack.decode(encode_telemetry(batch, "msgpack"))
    return data


def _pack(data: dict[str, object]) -> bytes:
    return msgspec.msgpack.encode(data)


def test_a_batch_comes_back_the_same_from_either_encoding_and_msgpack_is_half_the_bytes() -> None:
    batch = _batch()
    as_json = encode_telemetry(batch, "json")
    as_msgpack = encode_telemetry(batch, "msgpack")
    assert not is_msgpack(as_json) and is_msgpack(as_msgpack)
    assert decode_telemetry(as_json) == batch
    packed = decode_telemetry(as_msgpack)
    assert isinstance(packed, PackedTelemetry)
    assert packed.to_batch() == batch  # float64 bytes: every value exactly as sent
    assert packed.readings == 10 and packed.ts_list() == batch.ts
    assert packed.values == struct.pack("<80d", *(v for row in batch.values for v in row))
    assert len(as_msgpack) < 0.55 * len(as_json), (len(as_msgpack), len(as_json))


def test_the_floor_is_set_in_a_msgpack_payload_as_in_a_json_one() -> None:
    batch = _batch()
    for encoding in ("json", "msgpack"):
        again = decode_telemetry(with_floor(encode_telemetry(batch, encoding), 2))
        assert again.floor == 2 and again.seq == batch.seq
        got = again.to_batch() if isinstance(again, PackedTelemetry) else again
        assert got.values == batch.values


def test_an_unknown_encoding_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown telemetry encoding 'cbor'"):
        encode_telemetry(_batch(), "cbor")


def _spoiled() -> list[tuple[str, bytes, str]]:
    good = _fields(_batch())
    cases: list[tuple[str, dict[str, object] | bytes, str]] = [
        ("wrong schema version", {**good, "v": 99}, "unsupported schema version v=99"),
        ("wrong type", {**good, "seq": "three"}, "seq: Expected `int`, got `str`"),
        ("unknown field", {**good, "extra": 1}, "extra: unknown field"),
        ("missing field", {k: v for k, v in good.items() if k != "ts"},
         "missing required field `ts`"),
        ("values short", {**good, "values": bytes(good["values"])[:-8]},  # type: ignore[arg-type]
         "values has 632 bytes; 10 rows of 8 channels are 640"),
        ("ts ragged", {**good, "ts": bytes(good["ts"])[:-3]},  # type: ignore[arg-type]
         "not a whole number of float64"),
        ("NaN value", {**good, "values": struct.pack("<d", math.nan)
                       + bytes(good["values"])[8:]},  # type: ignore[arg-type]
         "every value must be finite"),
        ("infinite ts", {**good, "ts": struct.pack("<d", math.inf)
                         + bytes(good["ts"])[8:]},  # type: ignore[arg-type]
         "every timestamp must be a finite number"),
        ("negative ts", {**good, "ts": struct.pack("<d", -1.0)
                         + bytes(good["ts"])[8:]},  # type: ignore[arg-type]
         "every timestamp must be a finite number of seconds >= 0"),
        ("values as a list", {**good, "values": [[1.0] * 8] * 10}, "values: Expected `bytes`"),
        ("duplicate channels", {**good, "channels": ["a"] * 8}, "contain duplicates"),
        ("floor above seq", {**good, "floor": 9}, "floor 9 is above seq 3"),
        ("bad device id", {**good, "device_id": "bad$id"}, "device_id"),
        ("truncated", _pack(good)[:100], "invalid MessagePack"),
    ]
    return [(name, data if isinstance(data, bytes) else _pack(data), reason)
            for name, data, reason in cases]


@pytest.mark.parametrize(("name", "payload", "reason"), _spoiled(), ids=lambda x: str(x)[:20])
def test_a_bad_msgpack_batch_is_refused_saying_what_is_wrong(name: str, payload: bytes,
                                                             reason: str) -> None:
    assert is_msgpack(payload), name
    with pytest.raises(MessageError, match="TelemetryBatch") as err:
        decode_telemetry(payload)
    assert reason in str(err.value), (name, str(err.value))


def test_an_oversized_payload_is_refused_before_it_is_parsed() -> None:
    payload = b"\x88" + b"\x00" * MAX_PAYLOAD_BYTES
    with pytest.raises(MessageError, match="exceeds the limit"):
        decode_telemetry(payload)


def test_a_payload_that_is_neither_encoding_is_refused_as_json() -> None:
    with pytest.raises(MessageError, match="Invalid JSON"):
        decode_telemetry(b"\x93\x01\x02\x03")  # a MessagePack array, not a map
