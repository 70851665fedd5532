"""Fleet-scale mode: a thousand devices in one process, a few threads, the agent's own logic.

Each :class:`LiteDevice` has what a device has on the wire and on disk: its own MQTT v5
connection (client id = device id, persistent session, retained last will), its own durable
SQLite :class:`~edge_agent.telemetry.outbox.Outbox`, the agent's
:class:`~edge_agent.telemetry.batcher.TelemetryBatcher`,
:class:`~edge_agent.detect.detector.Detector`, an in-flight window, and the delivery protocol: a
message leaves the outbox only when the hub's retained acknowledgement on the device's ``ack``
topic covers it, and goes out again when an acknowledgement shows it missing or a probe is due.
What differs from ``edge_agent.agent.Agent`` is the threading: instead
of five threads per device, a few shard threads each drive hundreds of paho clients through one
``epoll`` selector (paho's own loop uses ``select()``, which cannot watch descriptors above
1023, and a thousand devices need several thousand descriptors).
"""

from __future__ import annotations

import logging
import selectors
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.detect.detector import Detection, Detector, LoadedModel
from edge_agent.models.loader import load_model
from edge_agent.telemetry.batcher import TelemetryBatcher
from edge_agent.telemetry.outbox import Outbox, Stream
from shared.manifest import Manifest
from shared.messages import Ack, AnomalyEvent, DeviceStatus, MessageError, Status, decode, encode
from shared.tls import client_context
from shared.topics import TopicError, Topics
from simulator.fleet import DeviceSpec
from simulator.shards import Shard
from simulator.source import SimulatedSource

__all__ = ["LiteDevice", "LiteFleet"]

log = logging.getLogger(__name__)


def _status(device_id: str, state: DeviceStatus) -> bytes:
    return encode(Status(device_id=device_id, state=state, at=time.time(),
                         agent_version="simulator-lite"))


class LiteDevice:
    """One device's outbox, batcher, detector and MQTT client; driven by a shard thread."""

    def __init__(self, spec: DeviceSpec, *, host: str, port: int, state_dir: Path,
                 topics: Topics, batch_max_readings: int = 100, batch_max_age_s: float = 2.0,
                 max_inflight: int = 20, keepalive: int = 30,
                 ack_timeout_s: float = 10.0, auth: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.device_id = spec.device_id
        self.host, self.port, self.keepalive = host, port, keepalive
        self.topics = topics
        self.max_inflight = max_inflight
        self.auth = dict(auth or {})  # the [mqtt] login keys an agent would have
        self.source = SimulatedSource(**spec.source_options())
        self.channels = list(self.source.channels)
        self.outbox = Outbox(state_dir / f"{self.device_id}.db", synchronous="normal",
                             ack_timeout_s=ack_timeout_s)
        self.batcher = TelemetryBatcher(
            self.outbox, device_id=self.device_id, channels=self.channels,
            topic=topics.telemetry(self.device_id), max_readings=batch_max_readings,
            max_age_s=batch_max_age_s,
        )
        self.detector = Detector(self.channels)
        self.pending_model: LoadedModel | None = None  # handed over to the shard between ticks
        self.readings = 0
        self.anomalies_raised = 0
        self.acked_readings = 0
        self.acked_anomalies = 0
        self.stored_readings = 0  # acknowledged by the hub
        self.acks_received = 0  # hub acknowledgements, their bytes and the CPU they cost
        self.ack_bytes = 0
        self.ack_cpu_s = 0.0
        self.connections = 0
        self.refused = 0
        self.bad_messages = 0
        self.last_error: str | None = None
        self._acks: deque[tuple[int, bool]] = deque()  # filled by paho callbacks only
        self._inbound: deque[tuple[str, bytes, bool]] = deque()  # hub acknowledgements, likewise
        self._link_changed = False
        self._connected = False
        self._stopping = False
        self._retry_at = 0.0
        self._backoff = 0.5
        self.client = self._make_client()
        self.shard: Shard | None = None
        self._final_status: dict[str, Any] | None = None
        self._next_reading_at = 0.0

    def close(self) -> None:
        """Keep the final status, then close the outbox."""
        self._final_status = self.status()
        self.outbox.close()

    # -- paho ------------------------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=self.device_id, protocol=MQTTProtocolVersion.MQTTv5,
                        reconnect_on_failure=False)
        c.username_pw_set(self.auth.get("username", self.device_id), self.auth.get("password"))
        if self.auth.get("tls"):
            c.tls_set_context(client_context(self.auth.get("tls_ca_file")))
        c.will_set(self.topics.status(self.device_id),
                   _status(self.device_id, DeviceStatus.OFFLINE), qos=1, retain=True)
        c.max_inflight_messages_set(65535)  # the device keeps the real window
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        return c

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 7 * 86400
        try:
            self.client.connect(self.host, self.port, self.keepalive, clean_start=False,
                                properties=props)
        except OSError as exc:
            self._note(f"connect to {self.host}:{self.port} failed: {exc}")
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 5.0)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._note(f"broker refused the connection: {reason}")
            return
        client.publish(self.topics.status(self.device_id),
                       _status(self.device_id, DeviceStatus.ONLINE), qos=1, retain=True)
        client.subscribe(self.topics.ack(self.device_id), 1)
        self.connections += 1
        self._connected = True
        self._link_changed = True
        self._backoff = 0.5

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._connected = False
        self._link_changed = True
        if not self._stopping:
            self._note(f"connection lost: {reason}")
            self._retry_at = time.monotonic() + self._backoff

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self._acks.append((mid, not bool(getattr(reason, "is_failure", False))))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._inbound.append((message.topic, bytes(message.payload), bool(message.retain)))

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self.shard is not None:
            self.shard.watch(self, sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self.shard is not None:
            self.shard.unwatch(sock)

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self.shard is not None:
            self.shard.want_write(self, sock, True)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self.shard is not None:
            self.shard.want_write(self, sock, False)

    def _note(self, message: str) -> None:
        if message != self.last_error:
            log.warning("lite %s: %s", self.device_id, message)
        self.last_error = message

    # -- the agent's work, one step ------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.pending_model is not None:
            self.detector.activate(self.pending_model)
            self.pending_model = None
        if time.time() >= self._next_reading_at:  # skip the source's lock until one is due
            self._take_readings()
        self.batcher.flush_if_due()
        self._pump()
        if not self._connected and not self._stopping and now >= self._retry_at > 0:
            self._retry_at = 0.0
            try:
                self.client.reconnect()
            except OSError as exc:
                self._note(f"reconnect failed: {exc}")
                self._retry_at = now + self._backoff
                self._backoff = min(self._backoff * 2, 5.0)

    def _take_readings(self) -> None:
        for reading in self.source.read(0.0):
            self.readings += 1
            detection = self.detector.push(reading)
            if detection is not None:
                self._raise(detection)
            self.batcher.add(reading)
        self._next_reading_at = self.source.next_ts

    def _raise(self, d: Detection) -> None:
        def build(seq: int) -> bytes:
            return encode(AnomalyEvent(device_id=self.device_id, epoch=self.outbox.epoch,
                                       seq=seq, ts=d.ts, score=d.score,
                                       threshold=d.threshold, model=d.model,
                                       channels=d.channels, detected_at=d.detected_at))

        self.outbox.add(device_id=self.device_id, stream=Stream.ANOMALIES,
                        topic=self.topics.anomalies(self.device_id), build=build)
        self.anomalies_raised += 1

    def _pump(self) -> None:
        """PUBACKs mark delivered; hub acknowledgements delete what they cover and queue again
        what they show missing; a link change resends; then fill the window."""
        while self._acks:
            mid, ok = self._acks.popleft()
            entry = self.outbox.puback(mid, ok)
            if entry is None:
                continue
            if not ok:
                self.refused += 1
            elif entry.stream is Stream.TELEMETRY:
                self.acked_readings += entry.readings
            else:
                self.acked_anomalies += 1
        while self._inbound:  # only the device's acknowledgement topic is subscribed to
            topic, payload, retained = self._inbound.popleft()
            started = time.thread_time()
            try:
                if self.topics.parse(topic).device_id != self.device_id or not payload:
                    continue
                ack = decode(Ack, payload)
                if ack.device_id != self.device_id:
                    raise MessageError(f"Ack: device_id {ack.device_id!r} is not ours")
                done = self.outbox.apply_ack(ack, live=not retained)
                self.stored_readings += done.stored_readings
                self.acks_received += 1
                self.ack_bytes += len(payload)
            except (MessageError, TopicError) as exc:
                self.bad_messages += 1
                self._note(f"bad message on {topic}: {exc}")
            finally:
                self.ack_cpu_s += time.thread_time() - started
        if self._link_changed:
            self._link_changed = False
            self.outbox.requeue_inflight()
        if not self._connected:
            return
        self.outbox.probe()
        free = self.max_inflight - self.outbox.inflight()
        if free <= 0:
            return
        for entry in self.outbox.take(free):
            info = self.client.publish(entry.topic, entry.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.outbox.requeue_inflight()
                return
            self.outbox.sent(int(info.mid), entry)

    def flush_batch(self) -> None:
        self.batcher.flush()
        self._pump()

    def status(self) -> dict[str, Any]:
        if self._final_status is not None:
            return self._final_status
        drops = self.outbox.drops()
        return {
            "device_id": self.device_id, "connected": self._connected,
            "readings": self.readings, "readings_sent": self.acked_readings,
            "anomalies_raised": self.anomalies_raised, "anomalies_sent": self.acked_anomalies,
            "readings_stored": self.stored_readings,
            "outbox_depth": self.outbox.depth(), "drops": drops.messages,
            "bad_readings": self.source.bad_readings, "reconnects": max(0, self.connections - 1),
            "bad_messages": self.bad_messages, "resent": self.outbox.resent,
            "acks_received": self.acks_received, "ack_bytes": self.ack_bytes,
            "ack_cpu_s": self.ack_cpu_s,
            "last_error": self.last_error,
        }


@dataclass
class LiteFleet:
    """Many :class:`LiteDevice` on one broker, split over ``shards`` threads."""

    mqtt_host: str
    mqtt_port: int
    state_root: Path
    topic_prefix: str = "edgeloop/v1"
    shards: int = 4
    tick_s: float = 0.05
    batch_max_readings: int = 100
    batch_max_age_s: float = 2.0
    ack_timeout_s: float = 10.0  # the agent's default
    # Each device's login (tls, tls_ca_file, username, password), e.g. Broker.device_auth
    mqtt_auth: Callable[[str], dict[str, Any]] | None = None
    devices: dict[str, LiteDevice] = field(default_factory=dict)
    stopped: bool = False
    _shards: list[Shard] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_root.mkdir(parents=True, exist_ok=True)
        self._shards = [Shard(f"lite-shard-{i}", self.tick_s) for i in range(self.shards)]

    def add(self, spec: DeviceSpec) -> LiteDevice:
        device = LiteDevice(spec, host=self.mqtt_host, port=self.mqtt_port,
                            state_dir=self.state_root, topics=Topics(self.topic_prefix),
                            batch_max_readings=self.batch_max_readings,
                            batch_max_age_s=self.batch_max_age_s,
                            ack_timeout_s=self.ack_timeout_s,
                            auth=self.mqtt_auth(spec.device_id) if self.mqtt_auth else None)
        shard = self._shards[len(self.devices) % len(self._shards)]
        device.shard = shard
        shard.devices.append(device)
        self.devices[spec.device_id] = device
        return device

    def start(self) -> None:
        """Connect every device (blocking TCP connects), then start the shard threads."""
        for device in self.devices.values():
            device.connect()
        for shard in self._shards:
            shard.thread.start()

    def wait_connected(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = sum(d._connected for d in self.devices.values())
            if up == len(self.devices):
                return up
            time.sleep(0.1)
        return sum(d._connected for d in self.devices.values())

    def activate(self, manifest: Manifest, tflite: bytes,
                 device_ids: Iterable[str] | None = None) -> None:
        """Load a verified model for each device (its own interpreter), here; the device's shard
        swaps it into the detector between two ticks, as the agent swaps between windows."""
        for device_id in device_ids or list(self.devices):
            device = self.devices[device_id]
            device.pending_model = load_model(manifest, tflite, channels=device.channels)

    def stop(self, flush_timeout: float = 30.0) -> bool:
        """Close sources, flush batches, wait until every outbox is empty, disconnect."""
        if self.stopped:
            return True
        self.stopped = True
        for device in self.devices.values():
            device.source.close()
        for shard in self._shards:
            shard.stop_event.set()
        for shard in self._shards:
            if shard.thread.is_alive():
                shard.thread.join(10.0)
        for device in self.devices.values():
            device.flush_batch()
        # Drive the sockets from here until every outbox drained (or time runs out).
        deadline = time.monotonic() + flush_timeout
        drained = False
        while time.monotonic() < deadline:
            busy = False
            for shard in self._shards:
                for key, mask in shard.selector.select(0) if shard.selector.get_map() else []:
                    device = key.data
                    if mask & selectors.EVENT_READ:
                        device.client.loop_read()
                    if mask & selectors.EVENT_WRITE:
                        device.client.loop_write()
            for device in self.devices.values():
                device.tick(time.monotonic())
                busy = busy or device.outbox.depth() > 0
            if not busy:
                drained = True
                break
            time.sleep(0.02)
        for device in self.devices.values():
            device._stopping = True
            if device._connected:
                device.client.publish(self.topics.status(device.device_id),
                                      _status(device.device_id, DeviceStatus.OFFLINE),
                                      qos=1, retain=True)
                device.client.loop_write()
                device.client.disconnect()
                device.client.loop_write()
            device.close()
        return drained

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {d.device_id: d.status() for d in self.devices.values()}

    def samples_generated(self) -> dict[str, int]:
        return {d.device_id: d.source.samples_generated for d in self.devices.values()}

    def reset_tick_lag(self) -> None:
        for shard in self._shards:
            shard.max_lag_s = 0.0

    def max_tick_lag_s(self) -> float:
        return max((s.max_lag_s for s in self._shards), default=0.0)
