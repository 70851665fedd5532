"""The agent's MQTT connection: the only module that touches paho.

One :class:`MqttLink` per device: client id and username are the device id, MQTT v5 with
``clean_start=False`` and a session expiry (the broker keeps subscriptions and queues QoS 1
messages while the device is away), a retained last will, retained "birth" messages published on
every connect, subscriptions re-made on every connect, and reconnects with exponential back-off
and full jitter. paho callbacks only put things on queues; the owner's threads do the work.

Publishing: :meth:`MqttLink.publish` returns the message id; the PUBACK arrives later as
:class:`Acked` on the ``control`` queue. The in-flight window is kept by the caller
(:mod:`edge_agent.telemetry.sender`), so paho's own queue never becomes the buffer. The records
put on the queues live in :mod:`edge_agent.comms.events` and are re-exported from here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.comms.deferred import defer_import

# paho imports urllib.request at load time, but reads it only to find an MQTT proxy when PySocks
# is installed (it is not a dependency of the agent). Loading it pulls in http.client, email and
# 36 more modules: 1.4 MB of the daemon's resident memory, for nothing.
defer_import("urllib.request")

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from edge_agent.comms.backoff import Backoff  # noqa: E402
from edge_agent.comms.events import (  # noqa: E402
    Acked,
    Connected,
    Disconnected,
    InboundMessage,
    LinkEvent,
    Wake,
)
from shared.tls import client_context  # noqa: E402

__all__ = [
    "Acked",
    "Connected",
    "Disconnected",
    "InboundMessage",
    "LinkEvent",
    "LinkSettings",
    "MqttLink",
    "Wake",
]

log = logging.getLogger(__name__)

_SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another client connected with our id
# A connection the broker closes this soon after accepting it, twice in a row, is the pattern of
# two clients with one client id taking the session from each other (mosquitto 2.0 closes the
# old connection without telling it why, so the reason code is not always there to read).
_SHORT_LIVED_S = 10.0
_SHORT_IN_A_ROW = 2


@dataclass(frozen=True)
class LinkSettings:
    client_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    session_expiry_s: int = 7 * 86400
    clean_start: bool = False
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    connect_timeout_s: float = 5.0
    # (topic, payload or a function making it), retained, QoS 1; set again before every connect
    will: tuple[str, bytes | Callable[[], bytes]] | None = None


class MqttLink:
    """A persistent-session MQTT v5 client that reconnects by itself until :meth:`stop`."""

    def __init__(
        self,
        settings: LinkSettings,
        *,
        inbound: queue.Queue[InboundMessage] | None = None,
        control: queue.Queue[LinkEvent] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.inbound = inbound
        self.control = control
        self.backoff = backoff or Backoff(settings.reconnect_initial_s, settings.reconnect_max_s)
        self.connections = 0  # successful CONNACKs
        self.last_error: str | None = None  # kept after recovery; last_error_at says when
        self.last_error_at: float | None = None  # wall clock
        self.takeovers = 0  # connections another client with our client id took over
        self._conflict: str | None = None  # set while that keeps happening
        self._logged_error: str | None = None
        self._short_lived = 0
        # False once a connect attempt failed since the last loss: a broker that is down or
        # restarting, not another client taking the session (its reconnect succeeds at once).
        self._clean_reconnect = True
        self._attempt_failed = False
        self.last_connected_at: float | None = None  # time.monotonic() of the last CONNACK
        self._subscriptions: dict[str, int] = {}
        self._births: dict[str, bytes | Callable[[], bytes]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._final_mid: int | None = None
        self._final_acked = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = self._make_client()

    # -- public API ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def session_conflict(self) -> str | None:
        """Why connections keep being taken over, until one has lasted a while."""
        held = self.last_connected_at
        if (self._conflict is not None and self.connected and held is not None
                and time.monotonic() - held > 3 * _SHORT_LIVED_S):
            self._conflict_over()
        return self._conflict

    def _conflict_over(self) -> None:
        if self._conflict is not None:
            log.info("mqtt %s: the session is no longer taken over (%d take-overs in all)",
                     self.settings.client_id, self.takeovers)
            self._conflict = None

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    def start(self) -> None:
        """Start connecting in the background (non-blocking)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._supervise, name=f"mqtt-{self.settings.client_id}", daemon=True
        )
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic_filter] = qos
        if self.connected:
            self._client.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            known = self._subscriptions.pop(topic_filter, None)
        if known is not None and self.connected:
            self._client.unsubscribe(topic_filter)

    def set_birth(self, topic: str, payload: bytes | Callable[[], bytes]) -> None:
        """A retained QoS 1 message published now (if connected) and on every connect; a
        function is called each time, so e.g. a timestamp in it is fresh."""
        with self._lock:
            self._births[topic] = payload
        if self.connected:
            self._client.publish(topic, _payload(payload), qos=1, retain=True)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Hand one message to the connection; its message id, or None when not connected."""
        if not self.connected:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    def stop(self, *, final: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Publish ``final`` (retained, e.g. the offline status) and wait for its PUBACK, then
        disconnect cleanly so the broker does not send the last will, and stop reconnecting."""
        deadline = time.monotonic() + timeout
        if final is not None and self.connected:
            self._final_acked.clear()
            info = self._client.publish(final[0], final[1], qos=1, retain=True)
            self._final_mid = int(info.mid)
            if not self._final_acked.wait(max(0.0, deadline - time.monotonic())):
                log.warning("final message on %s was not acknowledged within %.1fs",
                            final[0], timeout)
        self._stopping.set()
        self._lost.set()
        try:
            self._client.disconnect()
        except (OSError, ValueError) as exc:
            log.debug("disconnect: %s", exc)
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        self._client.loop_stop()
        self._close_wakeup_pair()
        self._connected.clear()

    # -- paho plumbing ---------------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,  # reconnects are ours, with jitter
        )
        client.username_pw_set(s.username or s.client_id, s.password)
        if s.tls:
            client.tls_set_context(client_context(s.tls_ca_file))
        client.max_inflight_messages_set(65535)  # the caller keeps the real window
        client.max_queued_messages_set(0)
        client.connect_timeout = s.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry_s
        return props

    def _supervise(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            self._lost.clear()
            if s.will is not None:
                self._client.will_set(s.will[0], _payload(s.will[1]), qos=1, retain=True)
            try:
                self._client.connect(
                    s.host, s.port, s.keepalive,
                    clean_start=s.clean_start, properties=self._connect_properties(),
                )
            except (OSError, ValueError) as exc:
                self._attempt_failed = True
                self._note_error(f"connect to {s.host}:{s.port} failed: {exc}")
                self._stopping.wait(self.backoff.next_delay())
                continue
            self._client.loop_start()
            while not self._lost.wait(timeout=1.0):
                continue  # paho's thread runs the connection until it is lost or we stop
            if self._stopping.is_set():
                break
            self._client.loop_stop()
            self._close_wakeup_pair()
            self._stopping.wait(self.backoff.next_delay())

    def _close_wakeup_pair(self) -> None:
        # paho's loop_start() makes a new wake-up socket pair without closing the previous one;
        # we restart the loop once per connection, so close the old pair ourselves.
        reset = getattr(self._client, "_reset_sockets", None)
        if reset is not None:
            reset(sockpair_only=True)

    def _note_error(self, message: str) -> None:
        if message != self._logged_error:  # once until the next good connection
            log.warning("mqtt %s: %s", self.settings.client_id, message)
        self._logged_error = message
        self.last_error = message
        self.last_error_at = time.time()

    def _note_loss(self, reason: Any, held_s: float | None, from_broker: bool) -> None:
        """Name a lost connection; recognise a session taken over by a client with our id."""
        code = getattr(reason, "value", None)
        cid = self.settings.client_id
        # Closed by the broker without a reason soon after a reconnect that worked at once:
        # not a keep-alive timeout, not a broker that was down in between.
        closed_soon = (held_s is not None and held_s < _SHORT_LIVED_S and not from_broker
                       and str(reason) == "Unspecified error" and self._clean_reconnect)
        if closed_soon:
            self._short_lived += 1
        elif code != _SESSION_TAKEN_OVER:
            self._short_lived = 0
        if code == _SESSION_TAKEN_OVER:
            conflict = (f"session taken over: another client connected with client id {cid!r} "
                        f"(two agents with the same device_id?)")
        elif self._short_lived >= _SHORT_IN_A_ROW:
            conflict = (f"session taken over (probably): the broker accepted and then closed "
                        f"{self._short_lived} connections in a row, each within "
                        f"{_SHORT_LIVED_S:.0f}s; another client is likely connected with client "
                        f"id {cid!r} (two agents with the same device_id?)")
        else:
            self._conflict_over()
            generic = str(reason) == "Unspecified error" and not from_broker
            self._note_error("connection lost" if generic else f"connection lost: {reason}")
            return
        self.takeovers += 1
        if self._conflict is None:  # once per episode, not once per flap
            log.warning("mqtt %s: %s", cid, conflict)
        else:
            log.debug("mqtt %s: session taken over again (%d so far)", cid, self.takeovers)
        self._conflict = conflict
        self._logged_error = conflict
        self.last_error = conflict
        self.last_error_at = time.time()

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._attempt_failed = True
            self._note_error(f"broker refused the connection: {reason}")
            return
        with self._lock:
            subscriptions = list(self._subscriptions.items())
            births = list(self._births.items())
        for topic_filter, qos in subscriptions:
            client.subscribe(topic_filter, qos)
        for topic, payload in births:
            client.publish(topic, _payload(payload), qos=1, retain=True)
        self.connections += 1
        self.last_connected_at = time.monotonic()
        self._clean_reconnect, self._attempt_failed = not self._attempt_failed, False
        if self._conflict is None:
            log.info("mqtt %s: connected to %s:%d (session %s)", self.settings.client_id,
                     self.settings.host, self.settings.port,
                     "resumed" if flags.session_present else "new")
        self._logged_error = None
        self.backoff.reset()
        self._connected.set()
        if self.control is not None:
            self.control.put(Connected(session_present=bool(flags.session_present)))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        held_s = None
        if was_connected and self.last_connected_at is not None:
            held_s = time.monotonic() - self.last_connected_at
        self._connected.clear()
        self._lost.set()
        if not self._stopping.is_set():
            from_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
            self._note_loss(reason, held_s, from_broker)
        if was_connected and self.control is not None:
            self.control.put(Disconnected(reason=str(reason)))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self.inbound is not None:
            props = getattr(message, "properties", None)
            user = tuple(getattr(props, "UserProperty", None) or ())
            self.inbound.put(InboundMessage(message.topic, bytes(message.payload),
                                            bool(message.retain), user))

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        if mid == self._final_mid:
            self._final_acked.set()
        if self.control is not None:
            failed = bool(getattr(reason, "is_failure", False))
            self.control.put(Acked(mid=mid, ok=not failed, reason=str(reason) if failed else ""))


def _payload(payload: bytes | Callable[[], bytes]) -> bytes:
    return payload() if callable(payload) else payload
