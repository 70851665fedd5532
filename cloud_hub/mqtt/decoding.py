"""Turning received MQTT messages into an :class:`IngestBatch`: decoded messages or dead letters.

Every check a payload must pass happens here, before anything touches the database: the topic
names a device stream the hub ingests, the payload is within the size limit, it decodes
strictly as the stream's message (schema version, types, bounds, finite numbers), and its
``device_id`` is the topic's. Anything else becomes a dead letter with the reason; it never
stops the batch it came in.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from cloud_hub.db.ingest_store import DeadLetterRecord, IngestBatch
from shared.messages import (
    MAX_PAYLOAD_BYTES,
    AnomalyEvent,
    DriftSummary,
    Heartbeat,
    MessageError,
    Reported,
    Status,
    TelemetryBatch,
    WireMessage,
    decode,
)
from shared.packed import decode_packed, is_msgpack
from shared.topics import DeviceTopic, TopicError, Topics

__all__ = ["INGESTED", "decode_batch", "route"]

log = logging.getLogger(__name__)

INGESTED: dict[DeviceTopic, type[WireMessage]] = {
    DeviceTopic.TELEMETRY: TelemetryBatch,
    DeviceTopic.ANOMALIES: AnomalyEvent,
    DeviceTopic.STATUS: Status,
    DeviceTopic.HEARTBEAT: Heartbeat,
    DeviceTopic.REPORTED: Reported,
    DeviceTopic.DRIFT: DriftSummary,
}
_RETAINED = (DeviceTopic.STATUS, DeviceTopic.REPORTED)
_LOG_FIRST = 100
# One decoder per message type, built once (msgspec.json.decode(..., type=cls) looks the type
# up on every call); a payload it refuses is decoded again by shared.messages.decode for the
# error message the dead letter carries.
_DECODERS = {cls: msgspec.json.Decoder(cls) for cls in INGESTED.values()}
_REFUSED = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)


@functools.lru_cache(maxsize=1 << 16)
def route(topics: Topics, topic: str) -> tuple[DeviceTopic, str]:
    """The ingested stream and the device a topic names, or :class:`TopicError` (not cached).
    Cached: a hub hears the same few topics per device over and over, and parsing one (split,
    the device id's pattern, two enum look-ups) cost as much as decoding a small payload."""
    parsed = topics.parse(topic)
    kind = parsed.stream
    if kind is None or kind not in INGESTED or parsed.device_id is None:
        raise TopicError(f"topic {topic!r} is not a stream the hub ingests")
    return kind, parsed.device_id


class _Counter:
    """Dead letters logged: the first hundred, then every thousandth (per process)."""

    seen = 0


def decode_batch(topics: Topics, messages: Iterable[Any], *, now: float | None = None
                 ) -> tuple[IngestBatch, int]:
    """Decode ``messages`` (anything with ``topic`` and ``payload``) into one batch; returns it
    and how many were empty retained records being cleared (nothing to store)."""
    batch = IngestBatch()
    cleared = 0
    received = time.time() if now is None else now
    for m in messages:
        payload = bytes(m.payload)
        try:
            message = _decode_one(topics, m.topic, payload)
        except (MessageError, TopicError) as exc:
            _dead_letter(batch, m.topic, str(exc), payload, received)
            continue
        except Exception as exc:  # a decoder bug is still one bad message, not a dead loop
            _dead_letter(batch, m.topic, f"{type(exc).__name__}: {exc}", payload, received)
            continue
        if message is None:
            cleared += 1
        else:
            batch.add(message)
    return batch, cleared


def _decode_one(topics: Topics, topic: str, payload: bytes) -> WireMessage | None:
    """The message ``payload`` is on ``topic`` (telemetry in JSON or MessagePack,
    :mod:`shared.packed`; everything else JSON), or None for a retained record cleared."""
    kind, device_id = route(topics, topic)
    cls = INGESTED[kind]
    # An empty payload clears a retained record; live delivery drops the retain flag.
    if not payload and kind in _RETAINED:
        return None
    limit = min(MAX_PAYLOAD_BYTES, getattr(cls, "max_bytes", MAX_PAYLOAD_BYTES))
    if len(payload) > limit:
        raise MessageError(f"payload of {len(payload)} bytes exceeds the limit of {limit}")
    message: WireMessage
    if kind is DeviceTopic.TELEMETRY and is_msgpack(payload):
        message = decode_packed(payload)  # raises MessageError saying why
    else:
        try:
            message = _DECODERS[cls].decode(payload)
        except _REFUSED:
            message = decode(cls, payload)  # raises MessageError saying why
    if message.device_id != device_id:
        raise MessageError(
            f"device_id {message.device_id!r} does not match the topic's {device_id!r}"
        )
    return message


def _dead_letter(batch: IngestBatch, topic: str, reason: str, payload: bytes, at: float) -> None:
    batch.dead_letters.append(DeadLetterRecord(topic=topic, reason=reason, payload=payload,
                                               received_at=at))
    _Counter.seen += 1
    n = _Counter.seen
    if n <= _LOG_FIRST or n % 1000 == 0:
        log.warning("ingest: dead letter #%d on %s: %s", n, topic, reason)
