"""What the hub's ingest tests hand :class:`cloud_hub.mqtt.ingest.MqttIngest` instead of a
broker: messages as paho gives them, and a connection that keeps its inbox and records the
PUBACKs ingest asks for."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from cloud_hub.mqtt.inbox import Inbox
from shared.messages import TelemetryBatch, encode
from shared.topics import Topics

__all__ = ["EPOCH", "FakeConnection", "FakeMessage", "new_inbox", "telemetry_message"]

EPOCH = "0123456789abcdef"
_TOPICS = Topics()


@dataclass
class FakeMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int = 1


def new_inbox() -> Inbox:
    return Inbox(max_messages=10_000, max_bytes=10_000_000)


def telemetry_message(device_id: str, seq: int, *, ts: float | None = None,
                      epoch: str = EPOCH) -> FakeMessage:
    """Telemetry batch ``seq`` of ``device_id`` (one reading of channel "a"), mid seq + 1."""
    batch = TelemetryBatch(device_id=device_id, epoch=epoch, seq=seq, channels=["a"],
                           ts=[float(seq) if ts is None else ts], values=[[1.0]])
    return FakeMessage(_TOPICS.telemetry(device_id), encode(batch), mid=seq + 1)


@dataclass
class FakeConnection:
    """What ingest needs of the MQTT connection: its topics, its inbox and PUBACKs."""

    inbound: Inbox = field(default_factory=new_inbox)
    topics: Topics = _TOPICS
    acked: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self) -> None:
        pass

    def ack_received(self, messages: list[FakeMessage]) -> int:
        with self.lock:
            self.acked.extend(m.mid for m in messages if m.qos == 1)
        return len(messages)

    def acked_now(self) -> list[int]:
        with self.lock:
            return list(self.acked)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)
