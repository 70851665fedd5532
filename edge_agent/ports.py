"""What the device core needs from outside it (a clock, a connection, the trust ring) and
what it tells about itself (:class:`CoreStatus`): the seams where the daemon, the simulator's
many-device loop and the unit tests hand in their own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from edge_agent.trust.keyring import TrustOutcome

__all__ = ["Clock", "CoreStatus", "SYSTEM_CLOCK", "SystemClock", "TrustRing", "Wire"]


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()


class Wire(Protocol):
    """What the core needs from a connection. Subscriptions and births (retained messages
    published on every connect) are remembered by the wire and made again after a reconnect."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None: ...

    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...

    def set_birth(self, topic: str, payload: bytes | Callable[[], bytes]) -> None: ...


class TrustRing(Protocol):
    """The device's signing keys (:class:`~edge_agent.trust.keyring.KeyRing`)."""

    @property
    def version(self) -> int: ...

    @property
    def refused(self) -> int: ...

    def trusted(self) -> Any: ...

    def known(self) -> Any: ...

    def offer(self, version: int, payload: bytes) -> TrustOutcome: ...


@dataclass(frozen=True)
class CoreStatus:
    """What a device knows about itself (``edge-agent status``, the heartbeat, the simulator)."""

    device_id: str
    connected: bool
    active_model: dict[str, Any] | None
    model_state: str | None
    threshold: float | None
    runtime: str | None
    readings: int
    batches_sent: int  # PUBACKed by the broker
    readings_sent: int
    anomalies_raised: int
    anomalies_sent: int
    outbox_depth: int
    outbox_bytes: int
    oldest_unsent_age_s: float
    drops: int
    dropped_readings: int
    dropped_anomalies: int
    bad_readings: int
    bad_messages: int
    outbox_refusals: int
    outbox_delivered: int
    batches_stored: int  # acknowledged by a hub
    readings_stored: int
    anomalies_stored: int
    drift: dict[str, Any] | None
    drift_summaries_stored: int
    resent: int
    hub: dict[str, Any]
    reconnects: int
    inference_us_p50: float | None
    inference_us_p99: float | None
    uptime_s: float
    last_error: str | None
    last_error_at: float | None
    trust_version: int
    trusted_keys: list[str]
    trust_refused: int
    acks_received: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
