"""The broker's own figures, as mosquitto publishes them under ``$SYS/broker/``, relayed by
every hub process in its metrics.

The broker is where an overload waits (the hub's session queue) and where a queue past its cap
loses messages: mosquitto drops them after it acknowledged them to the device, and says so in
one log line per episode. Agents resend what the hub's acknowledgement shows missing, but an
operator must see it happen. mosquitto publishes its counters every ``sys_interval`` seconds
(10 by default; only the figures that changed), and the hub's role may subscribe to
``$SYS/broker/#``. Each hub process keeps the latest value of every figure of
:data:`FIGURES` and exports them as ``edgeloop_broker_*``; with several hubs on one broker
each exports the same values, so rules take ``max`` over them. mosquitto's counters restart at
0 with the broker, which Prometheus' ``rate`` and ``increase`` treat as a counter reset.

``age_s`` is the time since the last figure arrived. The uptime changes at every interval, so
an age of several intervals means the broker stopped publishing them (``sys_interval 0``) or the
hub stopped hearing it. ``subscribed`` is 0 when the broker refused the subscription: a broker
set up before edgeloop relayed these figures, whose hub role lacks the ACL
(:data:`GRANT_HINT` says how to add it; a hub that manages the broker's identities adds it
itself, through ``on_refused``). The hub asks again every ``retry_s`` (60 s), or at once after
:meth:`BrokerStats.ask_again`, so the figures come once the role has it, without a restart.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared.topics import BROKER_STATS

__all__ = ["FIGURES", "GRANT_HINT", "BrokerFigure", "BrokerStats"]

log = logging.getLogger(__name__)
_HEAD = BROKER_STATS.removesuffix("#")  # "$SYS/broker/"
GRANT_HINT = ("run `cloud-hub broker sync-roles` with the hub's settings (or mosquitto_ctrl "
              "dynsec addRoleACL hub:<hub id> subscribePattern '$SYS/broker/#' allow, and the "
              "same with publishClientReceive)")


@dataclass(frozen=True)
class BrokerFigure:
    topic: str  # after $SYS/broker/
    key: str  # its name in GET /api/v1/metrics' "broker"
    name: str  # its Prometheus name after edgeloop_broker_
    kind: Literal["counter", "gauge"]
    help: str


FIGURES: tuple[BrokerFigure, ...] = (
    BrokerFigure("clients/connected", "clients_connected", "clients_connected", "gauge",
                 "clients connected to the broker"),
    BrokerFigure("clients/disconnected", "clients_disconnected", "clients_disconnected",
                 "gauge", "persistent sessions whose client is away (their messages queue)"),
    BrokerFigure("clients/expired", "clients_expired", "clients_expired_total", "counter",
                 "persistent sessions expired (persistent_client_expiration) and removed"),
    BrokerFigure("publish/messages/received", "publish_received", "publish_received_total",
                 "counter", "PUBLISH packets the broker received"),
    BrokerFigure("publish/messages/sent", "publish_sent", "publish_sent_total", "counter",
                 "PUBLISH packets the broker sent"),
    BrokerFigure("publish/messages/dropped", "publish_dropped", "publish_dropped_total",
                 "counter", "messages the broker dropped because a client's queue was at its "
                 "cap (max_queued_messages, max_queued_bytes), after acknowledging them to "
                 "their sender"),
    BrokerFigure("store/messages/count", "store_messages", "store_messages", "gauge",
                 "messages the broker holds: queued for sessions, in flight and retained"),
    BrokerFigure("store/messages/bytes", "store_bytes", "store_bytes", "gauge",
                 "payload bytes of the messages the broker holds"),
    BrokerFigure("retained messages/count", "retained_messages", "retained_messages", "gauge",
                 "retained messages the broker holds"),
    BrokerFigure("subscriptions/count", "subscriptions", "subscriptions", "gauge",
                 "subscriptions on the broker"),
    BrokerFigure("heap/current", "heap_bytes", "heap_bytes", "gauge",
                 "bytes of memory the broker has allocated"),
    BrokerFigure("bytes/received", "received_bytes", "received_bytes_total", "counter",
                 "bytes the broker received"),
    BrokerFigure("bytes/sent", "sent_bytes", "sent_bytes_total", "counter",
                 "bytes the broker sent"),
    BrokerFigure("uptime", "uptime_s", "uptime_seconds", "gauge",
                 "seconds since the broker started"),
)
_BY_TOPIC = {_HEAD + f.topic: f for f in FIGURES}
_VERSION = _HEAD + "version"
_LONGEST = 200  # bytes: mosquitto's figures are a number or a short text


class BrokerStats:
    """The latest of the broker's figures; fed from the hub's MQTT connection (one float per
    message, under a lock) and read by the metrics."""

    def __init__(self, clock: Any = time.monotonic, retry_s: float = 60.0,
                 on_refused: Callable[[], None] | None = None) -> None:
        """``on_refused`` is called (in paho's thread: it must return at once) when the broker
        refuses the subscription after granting it or on the first answer."""
        self._clock = clock
        self.retry_s = retry_s
        self.on_refused = on_refused
        self._refused_at: float | None = None
        self.refusals = 0  # the broker's refusals of the subscription, retries included
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._version: str | None = None
        self._at: float | None = None
        self._subscribed: bool | None = None  # None: not answered yet

    @staticmethod
    def wants(topic: str) -> bool:
        return topic.startswith(_HEAD)

    def observe(self, topic: str, payload: bytes) -> None:
        """Keep one figure; a figure it does not export, or a value it cannot read, is skipped
        (a broker's own topic is no device's input, but it is still checked)."""
        figure = _BY_TOPIC.get(topic)
        if (figure is None and topic != _VERSION) or len(payload) > _LONGEST:
            return
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            log.debug("broker stats: %s is not UTF-8", topic)
            return
        now = self._clock()
        if figure is None:
            with self._lock:
                self._version, self._at = text, now
            return
        try:  # "123 seconds" for the uptime, a plain number otherwise
            value = float(text.split(" ", 1)[0])
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            log.debug("broker stats: %s is not a count: %.40r", topic, text)
            return
        with self._lock:
            self._values[figure.key], self._at = value, now

    def subscribed(self, granted: bool, reason: str = "") -> None:
        """The broker's answer to the subscription (on every connect, and on every retry)."""
        with self._lock:
            before, self._subscribed = self._subscribed, granted
            self._refused_at = None if granted else self._clock()
            if not granted:
                self.refusals += 1
        if not granted and before is not False:
            log.warning("mqtt: the broker refused this hub $SYS/broker/# (%s): its figures "
                        "(dropped messages, the hub's queue) are not in the hub's metrics; "
                        "asking again every %.0f s. A broker set up before this version needs "
                        "the ACL added to the hub's role: %s", reason, self.retry_s, GRANT_HINT)
            if self.on_refused is not None:
                self.on_refused()
        elif granted and before is False:
            log.info("mqtt: the broker grants this hub $SYS/broker/# now")

    def ask_again(self) -> None:
        """Make the next :meth:`retry` due at once (the role was just given the ACL)."""
        with self._lock:
            if self._refused_at is not None:
                self._refused_at = -math.inf

    def retry(self) -> bool:
        """True, once per ``retry_s``, while the broker refuses the subscription: time to ask
        again."""
        with self._lock:
            now = self._clock()
            if self._refused_at is None or now - self._refused_at < self.retry_s:
                return False
            self._refused_at = now
            return True

    def snapshot(self) -> dict[str, Any]:
        """``{"subscribed", "age_s", "version", and each figure's key}``; a figure not heard
        yet is left out."""
        with self._lock:
            data: dict[str, Any] = dict(self._values)
            data["version"] = self._version
            data["subscribed"] = self._subscribed
            data["age_s"] = None if self._at is None else round(self._clock() - self._at, 3)
        return data
