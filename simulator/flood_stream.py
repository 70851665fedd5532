"""A flood device's telemetry stream: its epoch, its seqs and its payloads, encoded cheaply.

The payloads are the TelemetryBatch a hub decodes (JSON, or MessagePack as ``shared/packed.py``
reads it), built from pieces encoded once so that a message costs only its seq and timestamps.
"""

from __future__ import annotations

import random
import struct

import msgspec

from shared.messages import new_epoch
from simulator.flood_plan import FloodPlan
from simulator.mqtt_wire import utf8_string

__all__ = ["DeviceStream", "telemetry_payload"]

_ENCODER = msgspec.json.Encoder()
_MSGPACK = msgspec.msgpack.Encoder()
_SEQ_KEY = _MSGPACK.encode("seq")


def telemetry_payload(device_id: str, epoch: str, seq: int, channels: list[str],
                      ts: list[float], values: list[list[float]]) -> bytes:
    """A TelemetryBatch payload (schema v2, JSON) built without the struct's checks (the
    hub's decoder checks it strictly; a broken payload shows up there as a dead letter)."""
    return _ENCODER.encode({"v": 2, "device_id": device_id, "epoch": epoch, "seq": seq,
                            "floor": 0, "channels": channels, "ts": ts, "values": values})


_STEP = 0.125  # seconds between readings: exact in binary, so timestamps encode short


class DeviceStream:
    """One device's stream: its epoch, its next seq and its payload pieces, encoded once.

    A payload is ``head + seq + middle + ts + values-block + "}"``: the same JSON that
    :func:`telemetry_payload` makes, with only the seq and the timestamps encoded per
    message (the values cycle through a few blocks encoded at the start)."""

    __slots__ = ("_ts", "blocks", "device_id", "epoch", "head", "middle", "packed", "readings",
                 "seq", "t0", "topic")

    def __init__(self, device_id: str, plan: FloodPlan, topic: str, rng: random.Random,
                 t0: float) -> None:
        self.device_id = device_id
        self.epoch = new_epoch()
        self.seq = 0
        self.t0 = t0
        self.readings = plan.readings
        self.topic = utf8_string(topic)
        channels = [f"ch{c}" for c in range(plan.channels)]
        self.packed = plan.encoding == "msgpack"
        if self.packed:
            self._pack_pieces(plan, channels, rng)
            return
        whole = telemetry_payload(device_id, self.epoch, 0, channels, [0.0], [[0.0]])
        head, _, rest = whole.partition(b'"seq":0')
        self.head = head + b'"seq":'
        middle, _, _ = rest.partition(b'"ts":')
        self.middle = middle + b'"ts":'
        self.blocks = [b',"values":' + _ENCODER.encode(
            [[round(rng.gauss(20.0, 5.0), 3) for _ in range(plan.channels)]
             for _ in range(plan.readings)]) + b"}" for _ in range(4)]

    def _pack_pieces(self, plan: FloodPlan, channels: list[str], rng: random.Random) -> None:
        """The MessagePack form: a map of eight fields whose seq and ts are encoded per
        message; ``values`` (float64 bytes) cycles through a few blocks encoded here."""
        enc = _MSGPACK.encode
        self.head = b"\x88" + b"".join(enc(k) + enc(v) for k, v in (
            ("v", 2), ("device_id", self.device_id), ("epoch", self.epoch), ("floor", 0),
            ("channels", channels)))
        self.middle = enc("ts")
        self.blocks = [enc("values") + enc(struct.pack(
            f"<{plan.readings * plan.channels}d",
            *(round(rng.gauss(20.0, 5.0), 3) for _ in range(plan.readings * plan.channels))))
            for _ in range(4)]
        self._ts = struct.Struct(f"<{plan.readings}d")

    def next_payload(self) -> bytes:
        seq = self.seq
        self.seq = seq + 1
        start = self.t0 + seq * self.readings * _STEP
        if self.packed:
            enc = _MSGPACK.encode
            return b"".join((self.head, _SEQ_KEY, enc(seq), self.middle, enc(self._ts.pack(
                *[start + _STEP * k for k in range(self.readings)])), self.blocks[seq & 3]))
        ts = _ENCODER.encode([start + _STEP * k for k in range(self.readings)])
        return b"%s%d%s%s%s" % (self.head, seq, self.middle, ts, self.blocks[seq & 3])
