"""The records on the MQTT link's two queues: each inbound message, and the link's events (a
PUBACK, the connection coming up or going down; the owner adds its own wake-up nudge).

:class:`~edge_agent.comms.mqtt.MqttLink` makes them and re-exports them (they are the link's
public surface); the daemon and :mod:`edge_agent.telemetry.sender` read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Acked", "Connected", "Disconnected", "InboundMessage", "LinkEvent", "Wake"]


@dataclass(frozen=True)
class InboundMessage:
    topic: str
    payload: bytes
    retain: bool
    properties: tuple[tuple[str, str], ...] = ()  # MQTT 5 user properties


@dataclass(frozen=True)
class Acked:
    mid: int
    ok: bool  # False when the broker refused the message (reason code >= 0x80)
    reason: str = ""


@dataclass(frozen=True)
class Connected:
    session_present: bool
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Disconnected:
    reason: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Wake:
    """Not from the broker: the link's owner nudging the thread that reads ``control``."""


LinkEvent = Acked | Connected | Disconnected | Wake
