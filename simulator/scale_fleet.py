"""Fleet-scale mode: a thousand devices in one process, each running the agent's own core.

Every :class:`ScaleDevice` is an :class:`~edge_agent.core.DeviceCore` (the code ``edge-agent
run`` runs) with its own collaborators: a durable SQLite outbox, an on-disk model store and
trust ring, the TFLite loader, a simulated source, and its own MQTT v5 connection over TLS with
its own credential (client id = device id, persistent session, retained will and birth).
Models reach it as they reach an agent: ``desired`` → retained manifest → retained chunks →
signature, size and hash checks → shadow run → swap → ``reported``.

What differs from ``edge_agent.agent.Agent`` is only the transport and the threads: instead of
four threads per device, a few :class:`~simulator.shards.Shard` threads each drive hundreds of
paho clients through one ``epoll`` selector (paho's own loop uses ``select()``, which stops at
descriptor 1023, about 170 devices), and the signature check runs in-process (this process has
the cryptography library loaded anyway) instead of in a child per check.
"""

from __future__ import annotations

import gc
import logging
import selectors
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.core import DeviceCore
from edge_agent.models.loader import load_model
from edge_agent.models.store import ModelStore
from edge_agent.models.updater import UNLIMITED
from edge_agent.ports import CoreStatus
from edge_agent.telemetry.outbox import Outbox
from edge_agent.trust.keyring import open_keyring
from shared.keys import SignedParts
from shared.manifest import Manifest
from shared.messages import AnomalyEvent, DeviceStatus, MessageError, decode
from shared.signing import verify_manifest, verify_parts
from shared.tls import client_context
from shared.topics import DeviceTopic
from simulator.fleet import DeviceSpec, agent_config
from simulator.shards import RoundBudget, Shard
from simulator.source import SimulatedSource

__all__ = ["ScaleDevice", "ScaleFleet", "ShardWire"]

log = logging.getLogger(__name__)

# What a fleet-scale device runs with, beyond simulator.fleet.agent_config: no drift monitor
# (it is per-reading work that a thousand devices in one process would pay a thousand times and
# the runs here do not measure), a heartbeat per 30 s, the outbox without an fsync per commit.
SCALE_OVERRIDES: dict[str, dict[str, Any]] = {
    "drift": {"enabled": False},
    "heartbeat": {"interval_s": 30.0},
    "outbox": {"synchronous": "normal", "max_inflight": 20},
    "telemetry": {"batch_max_readings": 100, "batch_max_age_s": 2.0},
    "model": {"shadow_windows": 5},
    # The agent's default keepalive (the simulator's agents use 10 s): a thousand devices in one
    # process on a loaded machine can be held off the CPU for longer than 15 s (1.5 keepalives,
    # when the broker drops a silent client), and the reconnect storm that follows costs more.
    "mqtt": {"keepalive": 30},
}
_ANOMALIES = f"/{DeviceTopic.ANOMALIES.value}"
_MODELS = "/models/"
_MANIFEST = "/manifest"
_DESIRED = f"/{DeviceTopic.DESIRED.value}"
_ANOMALY_TIMES_MAX = 1000  # per device: a bench's worth; a device that raises more is noted no more

# The core's own timers (batch age, update timeouts, heartbeat, probes) need no more; it also
# ticks after each reading (a shadow run ends on a reading).
_CORE_TICK_S = 0.5
# How often the fleet's start, connecting devices one after another, drives the open sockets.
_CONNECT_PUMP_S = 1.0
# How soon a device whose reading was due and did not come looks again.
_IDLE_POLL_S = 0.1
_READING_MARGIN_S = 0.001
# Model-update steps per shard round (simulator.shards.RoundBudget): a staging (interpreter
# build) is ~2-4 ms of a fleet worker's CPU, so a round's steps stay within a few tens of ms.
# bench/rollout.py at load 5-6, two runs each (seconds_to_full; tick lag p99 during the rollout):
# 4 steps 7.8/7.5 s (0.76/0.74 s), 8: 4.7/7.8 s (0.57/1.03 s), 16: 4.6/7.2 s (0.26/0.58 s),
# 32: 5.0/5.5 s (0.42/0.43 s), no bound: 4.7/7.0 s (1.0/2.3 s).
UPDATE_STEPS_PER_ROUND = 16
# The simulated sensor makes its readings this many at a time, handed out when due: one
# reading made alone cost as much numpy work as a block, a quarter of a device's tick.
_SOURCE_LOOKAHEAD = 32


def _verify_manifest(manifest: Manifest, keys: Mapping[str, bytes]) -> None:
    verify_manifest(manifest, keys)


def _verify_all(checks: Sequence[SignedParts]) -> list[bool]:
    return [verify_parts(c) for c in checks]


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


class _Turn:
    """A device's share of its shard's :class:`~simulator.shards.RoundBudget` (the core's
    :class:`~edge_agent.models.updater.StepBudget`)."""

    def __init__(self, budget: RoundBudget, device: ScaleDevice) -> None:
        self._budget, self._device = budget, device

    def take(self) -> bool:
        return self._budget.take_for(self._device)


class ScaleDevice:
    """A device core, its source and its :class:`ShardWire`; one shard thread ticks it."""

    def __init__(self, spec: DeviceSpec, *, host: str, port: int, state_dir: Path,
                 trust_keys: dict[str, str], topic_prefix: str, auth: Mapping[str, Any],
                 overrides: dict[str, dict[str, Any]],
                 budget: RoundBudget | None = None) -> None:
        """``budget``: its shard's model-update steps per round (none: every step at once)."""
        self.spec = spec
        self.device_id = spec.device_id
        self.config = agent_config(spec, mqtt_host=host, mqtt_port=port, state_dir=state_dir,
                                   trust_keys=trust_keys, topic_prefix=topic_prefix,
                                   overrides=overrides, auth=dict(auth))
        cfg = self.config
        state_dir.mkdir(parents=True, exist_ok=True)
        self.source = SimulatedSource(**spec.source_options(), lookahead=_SOURCE_LOOKAHEAD)
        self.channels = list(self.source.channels)
        self.outbox = Outbox(state_dir / "outbox.db", synchronous=cfg.outbox.synchronous,
                             max_bytes=cfg.outbox.max_bytes, ack_timeout_s=cfg.outbox.ack_timeout_s,
                             probe_max_s=cfg.outbox.probe_max_s)
        trust = open_keyring(cfg.trust.keys, state_dir, verify=_verify_all)
        topics = cfg.topics()
        holder: list[DeviceCore] = []
        self.wire = ShardWire(self.device_id, host=host, port=port, keepalive=cfg.mqtt.keepalive,
                              auth=auth, will=(topics.status(self.device_id),
                                               lambda: holder[0].status_payload(
                                                   DeviceStatus.OFFLINE)))
        self.wire.owner = self
        self.client = self.wire.client  # what a shard drives
        # each reported state, and when each desired, manifest and chunk was read from the
        # socket ("desired_read", "manifest_read", "chunk_read"), time.monotonic()
        self.timeline: list[tuple[str, float]] = []
        channels = self.channels
        self.core = DeviceCore(
            cfg, channels=channels, outbox=self.outbox,
            store=ModelStore(state_dir / "models", trust, verify=_verify_manifest),
            trust=trust, wire=self.wire, agent_version="simulator-scale",
            on_queued=self._queued,
            on_report=lambda report: self.timeline.append((report.state.value,
                                                           time.monotonic())),
            loader=lambda manifest, data: load_model(manifest, data, channels=channels),
            update_budget=_Turn(budget, self) if budget is not None else UNLIMITED,
        )
        holder.append(self.core)
        self.core.source_bad_readings = lambda: self.source.bad_readings
        self.core.start()
        self._next_reading_at = 0.0
        self._next_core_tick = 0.0
        self._send = True  # something may be waiting for the window
        self._final: CoreStatus | None = None
        self.picked_at: float | None = None  # when the last readings were read (epoch s)

    def _queued(self) -> None:
        self._send = True

    def tick(self, now: float) -> None:
        """One round: what the wire received, readings that are due, the core's timers, then
        what the window lets go out (only when something may have changed it)."""
        core, events = self.core, self.wire.events
        moved = bool(events)
        while events:
            event = events.popleft()
            kind = event[0]
            if kind == "puback":
                core.on_puback(event[1], event[2], event[3])
            elif kind == "message":
                topic = event[1]
                core.on_message(topic, event[2], retain=event[3], properties=event[5])
                # a rollout's steps (simulator.rollout_phases)
                step = ("desired" if topic.endswith(_DESIRED) else None) if _MODELS not in topic \
                    else "manifest" if topic.endswith(_MANIFEST) else "chunk"
                if step is not None:
                    self.timeline.append((f"{step}_read", event[4]))
            elif kind == "up":
                core.on_link_up(event[1])
            else:
                core.on_link_down(event[1])
        read = False
        if time.time() >= self._next_reading_at:  # skip the source's lock until one is due
            self.picked_at = time.time()
            readings = self.source.read(0.0)
            if readings:
                core.on_readings(readings)
                read = True
            self._next_reading_at = self.source.next_ts
        if read or now >= self._next_core_tick or core.updater.step_waiting:
            if now >= self._next_core_tick:
                self._next_core_tick = now + _CORE_TICK_S
                moved = True  # probes are due on the clock
            core.tick()
        if moved or self._send:
            self._send = False
            core.send_now()
        self.wire.reconnect_if_due(now)

    def next_due(self, now: float) -> float:
        """When (``time.monotonic()``) this device next has something to do: its next reading,
        its core's timers, a reconnect."""
        at = self._next_core_tick
        wait = self._next_reading_at - time.time()
        # A reading that was due but did not come (a paused or closed source) is looked for
        # again on the core's pace, not in a busy loop. A reading's time is an epoch float whose
        # rounding is ~0.2 us: ticked exactly at it, the source may count it as not yet due and
        # the device would wait for the idle poll, so the tick comes a little after it.
        at = min(at, now + wait + _READING_MARGIN_S if wait > 0 else now + _IDLE_POLL_S)
        retry = self.wire.retry_at
        if retry > 0:
            at = min(at, retry)
        return at

    def status(self) -> CoreStatus:
        if self._final is not None:
            return self._final
        return self.core.status()

    def close(self) -> None:
        """Keep the final status, then close the outbox."""
        self._final = self.core.status()
        self.outbox.close()


@dataclass
class ScaleFleet:
    """Many :class:`ScaleDevice` on one broker, split over ``shards`` threads; ``mqtt_auth``
    gives each device its login (e.g. ``Broker.device_auth``)."""

    mqtt_host: str
    mqtt_port: int
    state_root: Path
    trust_keys: dict[str, str]
    topic_prefix: str = "edgeloop/v1"
    shards: int = 4
    tick_s: float = 0.1  # the longest a shard's loop sleeps (devices are ticked when due)
    # model-update steps (signature checks, stagings) a shard runs per round; 0: no bound
    update_steps_per_round: int = UPDATE_STEPS_PER_ROUND
    mqtt_auth: Callable[[str], dict[str, Any]] | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, ScaleDevice] = field(default_factory=dict)
    stopped: bool = False
    _shards: list[Shard] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_root.mkdir(parents=True, exist_ok=True)
        self._shards = [Shard(f"scale-shard-{i}", self.tick_s,
                              update_steps_per_round=self.update_steps_per_round)
                        for i in range(self.shards)]

    def add(self, spec: DeviceSpec,
            overrides: dict[str, dict[str, Any]] | None = None) -> ScaleDevice:
        """A new device; ``overrides``: its own config sections, over the fleet's."""
        if spec.device_id in self.devices:
            raise ValueError(f"device {spec.device_id!r} is already in the fleet")
        mine = overrides or {}
        overrides = {k: {**SCALE_OVERRIDES.get(k, {}), **self.overrides.get(k, {}),
                         **mine.get(k, {})}
                     for k in {*SCALE_OVERRIDES, *self.overrides, *mine}}
        shard = self._shards[len(self.devices) % len(self._shards)]
        device = ScaleDevice(spec, host=self.mqtt_host, port=self.mqtt_port,
                             state_dir=self.state_root / spec.device_id,
                             trust_keys=self.trust_keys, topic_prefix=self.topic_prefix,
                             auth=self.mqtt_auth(spec.device_id) if self.mqtt_auth else {},
                             overrides=overrides, budget=shard.budget)
        device.wire.shard = shard
        shard.devices.append(device)
        self.devices[spec.device_id] = device
        return device

    def start(self) -> None:
        """Connect every device (blocking TCP and TLS connects), then start the shards.

        Between connects this thread drives the sockets already open (CONNACKs, PINGREQs):
        on a busy machine a thousand TLS handshakes take longer than the keepalive, and the
        broker would drop the first devices before the shards ever read their CONNACK."""
        pumped = time.monotonic()
        for device in self.devices.values():
            device.wire.connect()
            if time.monotonic() - pumped >= _CONNECT_PUMP_S:
                self._drive_sockets(misc=True)
                pumped = time.monotonic()
        self._drive_sockets(misc=True)
        # A thousand devices are a few hundred thousand long-lived objects: each full collection
        # would walk them all while every shard waits (150 ms and more, measured). They live as
        # long as the fleet: out of the collector's sight.
        gc.collect()
        gc.freeze()
        for shard in self._shards:
            shard.thread.start()

    def _drive_sockets(self, *, misc: bool = False) -> None:
        """Read and write what the sockets have ready, from this thread (the shards are not
        running); ``misc``: keepalive too."""
        for shard in self._shards:
            shard.flush_writes()
            for key, mask in shard.selector.select(0) if shard.selector.get_map() else []:
                device = key.data
                if mask & selectors.EVENT_READ:
                    device.client.loop_read()
                    sock: Any = key.fileobj  # TLS may hold decrypted bytes epoll cannot see
                    while getattr(sock, "pending", None) is not None and sock.pending() > 0:
                        device.client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    device.client.loop_write()
            if misc:
                for device in shard.devices:
                    device.client.loop_misc()
            shard.flush_writes()

    def connected(self) -> int:
        return sum(d.wire.connected for d in self.devices.values())

    def wait_until(self, predicate: Callable[[], bool], timeout: float,
                   poll_s: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll_s)
        return predicate()

    def wait_connected(self, timeout: float) -> int:
        self.wait_until(lambda: self.connected() == len(self.devices), timeout, 0.1)
        return self.connected()

    def stop(self, flush_timeout: float = 30.0) -> bool:
        """Close the sources, stop the shards, write the open batches, drive the sockets from
        here until every outbox is acknowledged (or time runs out), then say offline and
        disconnect. True when every outbox drained."""
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
            device.core.flush()
        deadline = time.monotonic() + flush_timeout
        drained = False
        while time.monotonic() < deadline:
            self._drive_sockets()
            now = time.monotonic()
            for device in self.devices.values():
                device.tick(now)
            if all(d.outbox.depth() == 0 for d in self.devices.values()):
                drained = True
                break
            time.sleep(0.02)
        for device in self.devices.values():
            topic = device.core.topics.status(device.device_id)
            device.wire.close((topic, device.core.status_payload(DeviceStatus.OFFLINE)))
            device.close()
        return drained

    def statuses(self) -> dict[str, CoreStatus]:
        return {d.device_id: d.status() for d in self.devices.values()}

    def samples_generated(self) -> dict[str, int]:
        return {d.device_id: d.source.samples_generated for d in self.devices.values()}

    def reset_tick_lag(self) -> None:
        for shard in self._shards:
            shard.reset_lag()

    def tick_lags(self) -> list[float]:
        """How late each due tick was since the last reset, seconds, every shard."""
        return [lag for shard in self._shards for lag in shard.lags]

    def tick_lag_mark(self) -> list[int]:
        """Where each shard's lag samples are now (for :meth:`tick_lags_since`)."""
        return [len(shard.lags) for shard in self._shards]

    def tick_lags_since(self, mark: list[int]) -> list[float]:
        """The lags noted since ``mark`` (a reset in between: since the reset)."""
        return [lag for shard, start in zip(self._shards, mark, strict=True)
                for lag in shard.lags[start if start <= len(shard.lags) else 0:]]

    def max_tick_lag_s(self) -> float:
        return max((s.max_lag_s for s in self._shards), default=0.0)
