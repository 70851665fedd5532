"""The hub's one MQTT connection, for ingest and publishing alike.

Nothing else in the hub talks to paho. The connection starts in the background and retries
with back-off, so a hub whose broker is down (or late at boot) starts, serves its API and
connects when it can. MQTT 5 with a persistent session (the broker queues device streams for
the hub while it is away), ``manual_ack=True`` (ingest acknowledges a message only after its
commit), subscriptions made again on every connect, and the hub's presence records
(:mod:`cloud_hub.mqtt.presence`). paho's callbacks do no work: a message goes on the bounded
inbound queue (:mod:`cloud_hub.mqtt.inbox`); the birth record is one publish. The broker has at
most ``receive_maximum`` QoS 1 messages unacknowledged at the hub (MQTT 5 Receive Maximum): the
rest wait in the hub's session on the broker, which is the hub's back-pressure valve. The
other way, the hub keeps up to ``publish_window`` QoS 1 publishes unacknowledged (the broker's
Receive Maximum, mosquitto's ``max_inflight_messages``: 100 in the repo's mosquitto.conf), not
paho's default of 20. The broker's own figures (``$SYS/broker/#``, QoS 0, subscribed apart so
that a refusal costs nothing else) go to :class:`cloud_hub.metrics.broker.BrokerStats`, not to
ingest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.metrics.broker import BrokerStats
from cloud_hub.mqtt.client import SESSION_EXPIRY_S, MqttAuth, new_client
from cloud_hub.mqtt.inbox import Inbox
from cloud_hub.mqtt.lean import Received
from cloud_hub.mqtt.presence import HubPresence
from shared.messages import DeviceStatus
from shared.topics import BROKER_STATS, DeviceTopic, Topics

__all__ = ["HubConnection", "PublishError"]

log = logging.getLogger(__name__)
# The QoS 1 publishes the hub keeps unacknowledged by default: the Receive Maximum of the repo's
# mosquitto.conf (max_inflight_messages 100), which the broker enforces. The hub's QoS 1
# publishes come in bursts (a rollout's desired for every device, a model's chunks): with paho's
# default window of 20, a rollout's 1,000 desired took ~1 s to leave a busy hub (bench/rollout.py:
# the devices read theirs 0.12 to 1.18 s after the start), a PUBACK round trip and a wait for
# the interpreter lock per 20 messages. paho cannot change it on an open connection.
PUBLISH_WINDOW = 100
_SESSION_TAKEN_OVER = 142  # MQTT 5 reason code: another client connected with our client id
# mosquitto 2.0 closes a taken-over connection without that reason code. Two connections in a
# row that the broker closes this soon after accepting them are the pattern of two clients with
# one client id taking the session from each other (the agent's link uses the same rule).
_SHORT_LIVED_S = 10.0
_SHORT_IN_A_ROW = 2
_ANOMALIES_SUFFIX = f"/{DeviceTopic.ANOMALIES.value}"


class PublishError(RuntimeError):
    """The broker did not acknowledge a publish within the timeout."""


class HubConnection:
    """Connects in the background; ``subscriptions`` are made on every connect."""

    def __init__(
        self, *, host: str, port: int, topics: Topics, client_id: str,
        subscriptions: Sequence[tuple[str, int]], keepalive: int = 30,
        presence_refresh_s: float = 30.0, receive_maximum: int = 4000,
        inbox_bytes: int = 64 * 1024 * 1024, auth: MqttAuth | None = None,
        publish_window: int = PUBLISH_WINDOW, broker_stats: BrokerStats | None = None,
    ) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.topics = topics
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.receive_maximum = receive_maximum
        # QoS 1 is bounded by the receive maximum; the margin is for QoS 0 and retained records.
        self.inbound = Inbox(max_messages=receive_maximum + 1000, max_bytes=inbox_bytes)
        self.presence = HubPresence(topics, client_id, refresh_s=presence_refresh_s)
        self.births = 0  # online records published, one per granted subscription set
        self.subscribe_refusals = 0
        self.takeovers = 0  # times another client connected with our client id
        self.last_error: str | None = None
        self._connected_at: float | None = None
        self._short_lived = 0
        # False once a connect attempt failed since the last loss: a broker that is down or
        # restarting, not another client taking the session (whose reconnect works at once).
        self._clean_reconnect = True
        self._attempt_failed = False
        self._refused = False  # this attempt's CONNACK was a refusal (already noted)
        self._connected = threading.Event()
        self._ready = threading.Event()  # connected and every subscription granted
        self._stopping = threading.Event()
        self._subscribe_mid: int | None = None
        # The broker's figures: subscribed apart, so that a broker whose ACL predates them
        # refuses that one subscription and not the hub's session.
        self.broker_stats = broker_stats
        self._stats_mid: int | None = None
        # A SUBACK that paho's thread handled before the thread that subscribed again (tick)
        # had noted the message id: mid -> refused reason codes
        self._early_subacks: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        self._started = False
        self._client = new_client(client_id, manual_ack=True, auth=auth)
        self._client.max_queued_messages_set(0)
        self.publish_window = publish_window
        self._client.max_inflight_messages_set(publish_window)
        self._client.on_received = self._on_received
        self._client.on_pre_connect = self._on_pre_connect
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_message = self._on_message

    # -- life cycle ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def session(self) -> str:
        return self.presence.session

    def start(self) -> None:
        """Start connecting in the background; returns at once, whether or not the broker is
        up (paho retries with back-off, ``new_client`` sets its bounds)."""
        if self._started:
            return
        self._started = True
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = self.receive_maximum
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive,
                                   clean_start=False, properties=props)
        self._client.loop_start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected with every subscription granted."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0, *, announce: bool = True) -> None:
        """Announce the hub offline (retained: a clean disconnect does not send the will), then
        disconnect. ``announce=False``: leave the presence record alone (it belongs to another
        hub with this client id now)."""
        self._stopping.set()
        if not self._started:
            return
        if self.connected and announce:
            info = self._client.publish(self.presence.topic,
                                        self.presence.record(DeviceStatus.OFFLINE), qos=1,
                                        retain=True)
            try:
                info.wait_for_publish(min(timeout, 5.0))
                published = info.is_published()
            except (RuntimeError, ValueError):  # the connection went away meanwhile
                published = False
            if not published:
                log.warning("mqtt: the broker did not acknowledge the hub's offline record")
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._ready.clear()

    # -- used by ingest and the publishers -------------------------------------------------
    def ack(self, mid: int, qos: int) -> None:
        """PUBACK a message received with ``manual_ack`` (after its rows are committed)."""
        if qos > 0:
            self._client.ack(mid, qos)

    def ack_received(self, messages: Iterable[Received]) -> int:
        """PUBACK the QoS 1 ``messages`` in one write, those that came on the current
        connection only: a message id of an earlier connection may name another message on
        a new session (the broker redelivers the unacknowledged ones of a resumed session,
        and their copies are acknowledged then). Returns how many were acknowledged."""
        generation = self._client.generation
        return self._client.ack_many(
            m.mid for m in messages if m.qos == 1 and m.generation == generation)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_many(self, messages: list[tuple[str, bytes]], *, retain: bool = False) -> bool:
        """QoS 0, in one write (:meth:`LeanClient.publish_many`); False when not connected."""
        return self._client.publish_many(messages, retain=retain)

    def publish_all(self, messages: list[tuple[str, bytes]], *, timeout: float,
                    retain: bool = True) -> None:
        """Publish at QoS 1 and wait for every PUBACK; raises :class:`PublishError`."""
        if not self._connected.wait(timeout):
            raise PublishError(f"not connected to the MQTT broker {self.host}:{self.port} "
                               f"within {timeout}s")
        infos = [self._client.publish(t, p, qos=1, retain=retain) for t, p in messages]
        deadline = time.monotonic() + timeout
        for (topic, _), info in zip(messages, infos, strict=True):
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            except (RuntimeError, ValueError) as exc:
                raise PublishError(f"publish to {topic} failed: {exc}") from exc
            if not info.is_published():
                raise PublishError(f"broker did not acknowledge {topic} within {timeout}s")

    def tick(self) -> None:
        """Refresh the presence record when due, and ask again for the broker's figures if it
        refused them a while ago (called from a worker, not from paho)."""
        if self.connected and self.presence.refresh_due():
            self.presence.announced()
            self._client.publish(self.presence.topic, self.presence.record(DeviceStatus.ONLINE),
                                 qos=1, retain=True, properties=self.presence.properties())
        stats = self.broker_stats
        if stats is not None and self.connected and stats.retry():
            _rc, mid = self._client.subscribe(BROKER_STATS, qos=0)
            with self._lock:
                self._stats_mid = mid
                early = None if mid is None else self._early_subacks.pop(mid, None)
                self._early_subacks.clear()
            if early is not None:
                stats.subscribed(not early, ", ".join(early))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"mqtt_connected": self.connected, "session": self.session,
                    "births": self.births, "subscribe_refusals": self.subscribe_refusals,
                    "takeovers": self.takeovers, "mqtt_error": self.last_error,
                    "late_pingresps": self._client.late_pingresps}

    # -- paho callbacks: hand-off only -----------------------------------------------------
    def _on_pre_connect(self, client: mqtt.Client, _u: Any) -> None:
        # paho sends the will stored at each (re)connect: set this session's before each one.
        self.presence.new_session()
        self._refused = False
        client.will_set(self.presence.topic, self.presence.record(DeviceStatus.OFFLINE), qos=1,
                        retain=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any,
                    properties: Any) -> None:
        if rc.is_failure:
            self._attempt_failed = self._refused = True
            self._note(f"broker refused the connection: {rc}", error=True)
            return
        # MQTT 5: no Receive Maximum in the CONNACK means 65,535
        receive_maximum = int(getattr(properties, "ReceiveMaximum", 65535))
        if receive_maximum < self.publish_window:
            log.warning("mqtt: the broker takes at most %d unacknowledged QoS 1 publishes, the "
                        "hub's window is %d: raise the broker's max_inflight_messages "
                        "(mosquitto.conf)", receive_maximum, self.publish_window)
        self._client.generation += 1
        self._connected.set()
        self._connected_at = time.monotonic()
        self._clean_reconnect, self._attempt_failed = not self._attempt_failed, False
        if self.subscriptions:
            _rc, self._subscribe_mid = client.subscribe(self.subscriptions)
            if self.broker_stats is not None:
                _rc, self._stats_mid = client.subscribe(BROKER_STATS, qos=0)
        else:  # a publishing-only connection (e.g. a bench): nothing to announce
            self._ready.set()
        self.last_error = None
        log.info("mqtt: connected to %s:%d as %s", self.host, self.port, self.client_id)

    def _on_subscribe(self, client: mqtt.Client, _u: Any, mid: int, reason_codes: list[Any],
                      _p: Any) -> None:
        refused = [str(rc) for rc in reason_codes if rc.value >= 0x80]
        if self.broker_stats is not None and mid != self._subscribe_mid:
            with self._lock:
                ours = mid == self._stats_mid
                if not ours:  # perhaps tick's, before it noted the id
                    self._early_subacks[mid] = refused
            if ours:
                self.broker_stats.subscribed(not refused, ", ".join(refused))
            return
        if mid != self._subscribe_mid:
            return
        if refused:
            with self._lock:
                self.subscribe_refusals += 1
            log.error("mqtt: broker refused subscriptions (%s); not announcing session %s",
                      ", ".join(refused), self.session)
            return
        client.publish(self.presence.topic, self.presence.record(DeviceStatus.ONLINE), qos=1,
                       retain=True, properties=self.presence.properties())
        self.presence.announced()
        with self._lock:
            self.births += 1
        self._ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        self._ready.clear()
        self.presence.withdrawn()
        held = None if self._connected_at is None else time.monotonic() - self._connected_at
        self._connected_at = None
        if self._stopping.is_set():
            return
        if held is None:  # closed before a CONNACK accepted it: this attempt failed
            self._attempt_failed = True
            if not self._refused:
                self._note(f"the broker at {self.host}:{self.port} closed the connection before "
                           f"accepting it ({rc}): a broker that wants TLS (EDGELOOP_MQTT_TLS, "
                           "EDGELOOP_MQTT_CA_FILE) or a password (EDGELOOP_MQTT_PASSWORD) does "
                           "this, as does one still starting or a proxy without a way through; "
                           "retrying with back-off")
            return
        if self._taken_over(rc, held, bool(getattr(flags, "is_disconnect_packet_from_server",
                                                   False))):
            with self._lock:
                self.takeovers += 1
            self._note(f"another client connected with this hub's client id {self.client_id!r} "
                       "and took its session; two hubs must not share a client id "
                       "(EDGELOOP_MQTT_CLIENT_ID)", error=True)
        else:
            self._note(f"disconnected from the broker ({rc}); reconnecting")

    def _taken_over(self, rc: Any, held: float | None, from_broker: bool) -> bool:
        if getattr(rc, "value", None) == _SESSION_TAKEN_OVER:
            return True
        # Closed by the broker without a reason soon after a reconnect that worked at once: not
        # a keep-alive timeout, not a broker that was down in between.
        if (held is None or held >= _SHORT_LIVED_S or from_broker
                or str(rc) != "Unspecified error" or not self._clean_reconnect):
            self._short_lived = 0
            return False
        self._short_lived += 1
        return self._short_lived >= _SHORT_IN_A_ROW

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self._attempt_failed = True
        self._note(f"cannot reach the MQTT broker at {self.host}:{self.port}; retrying with "
                   "back-off")

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        # QoS 2 only (nothing the hub subscribes to uses it): the lean path takes QoS 0 and 1.
        self._on_received(Received(message.topic, bytes(message.payload), message.mid,
                                   message.qos, bool(message.retain), self._client.generation))

    def _on_received(self, message: Received) -> None:
        if self.broker_stats is not None and self.broker_stats.wants(message.topic):
            self.broker_stats.observe(message.topic, message.payload)  # QoS 0: no ack
            return
        # An anomaly is the latency-critical stream: its batch is stored at once rather than
        # after the batch wait (anomalies are rare; the commits they cut short are few).
        self.inbound.put(message, stop=self._stopping,
                         urgent=message.topic.endswith(_ANOMALIES_SUFFIX))

    def _note(self, text: str, *, error: bool = False) -> None:
        if text != self.last_error:
            (log.error if error else log.warning)("mqtt: %s", text)
        self.last_error = text
