"""One fleet-scale device's MQTT v5 connection, driven by a shard's ``epoll`` selector.

paho's own loop uses ``select()``, which stops at descriptor 1023 (about 170 devices), so a
:class:`~simulator.shards.Shard` thread drives hundreds of these through one selector instead;
each is the ``Wire`` an :class:`~edge_agent.core.DeviceCore` talks through
(:mod:`simulator.scale_device`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.messages import AnomalyEvent, MessageError, decode
from shared.tls import client_context
from shared.topics import DeviceTopic
from simulator.shards import Shard

__all__ = ["ShardWire"]

log = logging.getLogger(__name__)

_ANOMALIES = f"/{DeviceTopic.ANOMALIES.value}"
_ANOMALY_TIMES_MAX = 1000  # per device: a bench's worth; a device that raises more is noted no more


class ShardWire:
    """One device's MQTT connection, driven by a shard's selector instead of paho's loop.

    paho callbacks only append to deques; the device's tick, in the same shard thread, hands
    their contents to the core. Subscriptions and births are remembered and made again on every
    connect; reconnects back off exponentially up to 5 s."""

    def __init__(self, device_id: str, *, host: str, port: int, keepalive: int,
                 auth: Mapping[str, Any], will: tuple[str, Callable[[], bytes]]) -> None:
        self.device_id = device_id
        self.host, self.port, self.keepalive = host, port, keepalive
        self.shard: Shard | None = None
        self.owner: Any = None  # what the shard hands back on a ready socket (the device)
        self.events: deque[tuple[Any, ...]] = deque()
        self.connections = 0
        self.last_error: str | None = None
        self.stopping = False
        self._connected = False
        self._will = will
        self._subscriptions: dict[str, int] = {}
        self._births: dict[str, bytes | Callable[[], bytes]] = {}
        self._retry_at = 0.0
        self._backoff = 0.5
        # Where each anomaly's time went on this side (the fleet bench's stage breakdown):
        # (epoch, seq) -> {"published": handed to paho, "written": paho's queue written to the
        # socket, "puback": the broker's PUBACK}, epoch seconds; the first send of each.
        self.anomaly_times: dict[tuple[str, int], dict[str, float]] = {}
        self._anomaly_mids: dict[int, tuple[str, int]] = {}
        self._unwritten: list[tuple[str, int]] = []
        c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=device_id,
                        protocol=MQTTProtocolVersion.MQTTv5, reconnect_on_failure=False)
        c.username_pw_set(auth.get("username", device_id), auth.get("password"))
        if auth.get("tls"):
            c.tls_set_context(client_context(auth.get("tls_ca_file")))
        c.max_inflight_messages_set(65535)  # the core keeps the real window
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        self.client = c

    # -- the Wire protocol (edge_agent.core) -------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> int | None:
        if not self._connected:
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        if topic.endswith(_ANOMALIES):
            self._note_anomaly(payload, int(info.mid))
        return int(info.mid)

    def _note_anomaly(self, payload: bytes, mid: int) -> None:
        try:
            event = decode(AnomalyEvent, payload)
        except MessageError:
            return
        key = (event.epoch, event.seq)
        if key in self.anomaly_times or len(self.anomaly_times) >= _ANOMALY_TIMES_MAX:
            return
        self.anomaly_times[key] = {"published": time.time()}
        picked = getattr(self.owner, "picked_at", None)  # when its window's reading was read
        if picked is not None:
            self.anomaly_times[key]["picked"] = picked
        self._anomaly_mids[mid] = key
        if self.client.want_write():
            self._unwritten.append(key)
        else:  # paho wrote it at once
            self.anomaly_times[key]["written"] = self.anomaly_times[key]["published"]

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self._subscriptions[topic_filter] = qos
        if self._connected:
            self.client.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        if self._subscriptions.pop(topic_filter, None) is not None and self._connected:
            self.client.unsubscribe(topic_filter)

    def set_birth(self, topic: str, payload: bytes | Callable[[], bytes]) -> None:
        self._births[topic] = payload
        if self._connected:
            self.client.publish(topic, payload() if callable(payload) else payload, qos=1,
                                retain=True)

    # -- connecting ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Blocking TCP and TLS connect; the CONNACK arrives through the shard."""
        topic, will = self._will
        self.client.will_set(topic, will(), qos=1, retain=True)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 7 * 86400
        try:
            self.client.connect(self.host, self.port, self.keepalive, clean_start=False,
                                properties=props)
        except OSError as exc:
            self._note(f"connect to {self.host}:{self.port} failed: {exc}")
            self._retry(time.monotonic())

    @property
    def retry_at(self) -> float:
        """When (``time.monotonic()``) the next reconnect is due; 0 when none is."""
        return self._retry_at

    def reconnect_if_due(self, now: float) -> None:
        if self._connected or self.stopping or not (now >= self._retry_at > 0):
            return
        self._retry_at = 0.0
        topic, will = self._will
        self.client.will_set(topic, will(), qos=1, retain=True)
        try:
            self.client.reconnect()
        except OSError as exc:
            self._note(f"reconnect failed: {exc}")
            self._retry(now)

    def _retry(self, now: float) -> None:
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)

    def close(self, final: tuple[str, bytes] | None) -> None:
        """Publish ``final`` (the offline status), disconnect cleanly (no will), from the
        caller's thread once the shards have stopped."""
        self.stopping = True
        if self._connected:
            if final is not None:
                self.client.publish(final[0], final[1], qos=1, retain=True)
                self.client.loop_write()
            self.client.disconnect()
            self.client.loop_write()

    def _note(self, message: str) -> None:
        if message != self.last_error:
            log.warning("device %s: %s", self.device_id, message)
        self.last_error = message

    # -- paho callbacks (the shard thread) -----------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._note(f"broker refused the connection: {reason}")
            return
        for topic_filter, qos in self._subscriptions.items():
            client.subscribe(topic_filter, qos)
        for topic, payload in self._births.items():
            client.publish(topic, payload() if callable(payload) else payload, qos=1,
                           retain=True)
        self.connections += 1
        self._connected = True
        self._backoff = 0.5
        self.events.append(("up", bool(flags.session_present)))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was = self._connected
        self._connected = False
        if not self.stopping:
            self._note(f"connection lost: {reason}")
            self._retry(time.monotonic())
        if was:
            self.events.append(("down", str(reason)))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        failed = bool(getattr(reason, "is_failure", False))
        key = self._anomaly_mids.pop(mid, None)
        if key is not None:
            self.anomaly_times[key].setdefault("puback", time.time())
        self.events.append(("puback", mid, not failed, str(reason) if failed else ""))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # read from the socket at: a rollout's phases tell the wait for the broker from the wait
        # for the device's tick
        # with its MQTT 5 user properties (a hub's presence record names the encodings it reads)
        user = tuple(getattr(message.properties, "UserProperty", None) or ())
        self.events.append(("message", message.topic, bytes(message.payload),
                            bool(message.retain), time.monotonic(), user))

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self.shard is not None:
            self.shard.watch(self.owner, sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self.shard is not None:
            self.shard.unwatch(sock)

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self.shard is not None:
            self.shard.want_write(self.owner, sock, True)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._unwritten:  # paho's queue is empty: every anomaly in it reached the socket
            now = time.time()
            for key in self._unwritten:
                self.anomaly_times[key].setdefault("written", now)
            self._unwritten.clear()
        if self.shard is not None:
            self.shard.want_write(self.owner, sock, False)
