"""Helpers for the edge tests: fixture models, a hub stand-in that publishes signed models, a
paho collector that dedups by (device_id, seq), an in-process source, and condition waits.

Only the standard library, numpy, paho and the project: these tests also run in the minimal
venv without TensorFlow.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import AgentConfig, config_from_dict
from edge_agent.sources.base import Reading, SensorSource
from shared.codec import sha256_hex, split
from shared.manifest import (
    ChunkTable,
    InputSpec,
    Manifest,
    Normalization,
    ParitySummary,
    Quantization,
    ScoreSpec,
)
from shared.messages import Ack, Desired, ModelRef, StreamAck, encode
from shared.signing import SigningKey
from shared.topics import TopicAccess, Topics
from simulator.broker import Broker

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHANNELS = ["a", "b"]
TOPICS = Topics()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy; fail the test naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def signal_value(i: int, phase: float = 0.0) -> tuple[float, float]:
    """The fixture models' normal data: two correlated sines (deterministic, no noise)."""
    base = math.sin(i * 0.3 + phase)
    return (base, 0.8 * base + 0.05 * math.sin(i * 1.7))


def make_manifest(
    key: SigningKey,
    data: bytes,
    *,
    name: str = "pump-ae",
    version: int = 1,
    release: int | None = None,
    window: int = 8,
    channels: list[str] | None = None,
    threshold: float = 1.0,
    quantization: Quantization = Quantization.INT8,
    chunk_size: int = 1024,
    stride: int = 1,
    smoothing: int = 1,
    sha256: str | None = None,
    size: int | None = None,
) -> Manifest:
    channels = channels or CHANNELS
    chunks = split(data, chunk_size)
    manifest = Manifest(
        name=name, version=version, release=release or version, created_at=time.time(),
        quantization=quantization,
        size=size or len(data), sha256=sha256 or sha256_hex(data), chunk_size=chunk_size,
        chunks=ChunkTable.of(chunks),
        input=InputSpec(window=window, channels=channels, stride=stride),
        normalization=Normalization(method="zscore", center=[0.0] * len(channels),
                                    scale=[0.7] * len(channels)),
        score=ScoreSpec(method="mse", smoothing=smoothing), threshold=threshold,
        parity=ParitySummary(decision_agreement=1.0, windows=100), float_size=len(data),
        key_id=key.key_id,
    )
    return key.sign(manifest)


class HubStandIn:
    """Publishes what the hub would: retained manifests, chunks and desired records."""

    def __init__(self, broker: Broker) -> None:
        # A hub's rights, and the status record of any hub: tests play several hubs with it.
        hub = TOPICS.hub_access("test-hub")
        access = TopicAccess(publish=(*hub.publish, TOPICS.all_hub_status()),
                             subscribe=hub.subscribe)
        self.client = broker.client(broker.add_client("test-hub", access))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)

    def publish_model(self, manifest: Manifest, data: bytes,
                      chunks: list[bytes] | None = None,
                      manifest_payload: bytes | None = None) -> None:
        for i, chunk in enumerate(chunks if chunks is not None else split(data,
                                                                           manifest.chunk_size)):
            self._publish(TOPICS.chunk(manifest.name, manifest.version, i), chunk)
        self._publish(TOPICS.manifest(manifest.name, manifest.version),
                      manifest_payload if manifest_payload is not None else manifest.to_bytes())

    def set_desired(self, device_id: str, name: str, version: int, *,
                    retain: bool = True) -> None:
        desired = Desired(device_id=device_id, model=ModelRef(name=name, version=version),
                          issued_at=time.time())
        self._publish(TOPICS.desired(device_id), encode(desired), retain=retain)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class DeviceLog:
    telemetry: dict[int, dict[str, Any]] = field(default_factory=dict)
    anomalies: dict[int, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    status: list[dict[str, Any]] = field(default_factory=list)
    reported: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[int, dict[str, Any]] = field(default_factory=dict)

    def readings(self) -> int:
        return sum(len(b["ts"]) for b in self.telemetry.values())

    def all_ts(self) -> list[float]:
        return [t for seq in sorted(self.telemetry) for t in self.telemetry[seq]["ts"]]


class Collector:
    """A hub stand-in: a subscriber with its own persistent session that keeps one copy per
    (device_id, seq) and acknowledges what it keeps as the hub does (a retained Ack per device,
    watermark from the device's floor), so that agents empty their outboxes. ``acks=False``:
    a listener that stores nothing for the devices (they keep their messages)."""

    def __init__(self, broker: Broker, client_id: str = "test-collector",
                 acks: bool = True, refuse: set[tuple[str, int]] | None = None) -> None:
        """``refuse``: (stream, seq) pairs turned away as the hub does with a dead letter:
        neither stored nor acknowledged, however often they come."""
        self.acks = acks
        self.refuse = set(refuse or ())
        self.refused = 0
        self._marks: dict[tuple[str, str, str], tuple[set[int], int]] = {}
        self.devices: dict[str, DeviceLog] = {}
        self.lock = threading.Lock()
        # A hub's identity: it reads every device stream and writes the devices' acks.
        self.client = broker.client(broker.add_hub(client_id))
        self._subscribed = threading.Event()
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 10, "collector subscription")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        client.subscribe([(f"{TOPICS.prefix}/devices/+/{kind}", 1)
                          for kind in ("telemetry", "anomalies", "status", "reported",
                                       "heartbeat", "drift")])
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        parsed = TOPICS.parse(msg.topic)
        if not msg.payload:
            return
        body = json.loads(msg.payload)
        with self.lock:
            log = self.devices.setdefault(str(parsed.device_id), DeviceLog())
            if parsed.kind in ("telemetry", "anomalies", "drift"):
                if (parsed.kind, body["seq"]) in self.refuse:
                    self.refused += 1
                    return
                store = {"telemetry": log.telemetry, "anomalies": log.anomalies,
                         "drift": log.drift}[parsed.kind]
                if body["seq"] in store:
                    log.duplicates += 1
                    assert {**store[body["seq"]], "floor": 0} == {**body, "floor": 0}, \
                        "same seq, different content"
                store[body["seq"]] = body
                if self.acks:
                    self._acknowledge(client, str(parsed.device_id), parsed.kind, body)
            elif parsed.kind == "status":
                log.status.append(body)
            elif parsed.kind == "heartbeat":
                log.heartbeats.append(body)
            else:
                log.reported.append(body)

    def _acknowledge(self, client: paho.Client, device_id: str, stream: str,
                     body: dict[str, Any]) -> None:
        key = (device_id, body["epoch"], stream)
        seqs, floor = self._marks.get(key, (set(), 0))
        seqs.add(body["seq"])
        self._marks[key] = (seqs, max(floor, body.get("floor", 0)))
        marks: dict[str, StreamAck] = {}
        for kind in ("telemetry", "anomalies", "drift"):
            if kind == "drift" and (device_id, body["epoch"], kind) not in self._marks:
                continue  # as the hub: no drift mark for a device that sent no summary
            stored, low = self._marks.get((device_id, body["epoch"], kind), (set(), 0))
            watermark = low - 1
            while watermark + 1 in stored:
                watermark += 1
            marks[kind] = StreamAck(watermark=watermark, top=max(stored, default=-1)
                                    if stored else -1)
            if marks[kind].top < watermark:
                marks[kind] = StreamAck(watermark=watermark, top=watermark)
        ack = Ack(device_id=device_id, epoch=body["epoch"], at=time.time(), **marks)
        client.publish(TOPICS.ack(device_id), encode(ack), qos=0, retain=True)

    def device(self, device_id: str) -> DeviceLog:
        with self.lock:
            return self.devices.setdefault(device_id, DeviceLog())

    def last_reported(self, device_id: str) -> dict[str, Any] | None:
        reported = self.device(device_id).reported
        return reported[-1] if reported else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class ScriptedSource(SensorSource):
    """Readings from ``value(i)`` at ``rate_hz`` (0 = as fast as asked) until ``total``;
    ``pause()`` / ``resume()`` hold it, ``ts`` are 1000 + i for easy checking."""

    def __init__(self, total: int, *, rate_hz: float = 0.0,
                 value: Callable[[int], tuple[float, ...]] = signal_value,
                 channels: list[str] | None = None, batch: int = 50) -> None:
        self.channels = list(channels or CHANNELS)
        self.total = total
        self.rate_hz = rate_hz
        self.value = value
        self.batch = batch
        self.emitted = 0
        self._started = time.monotonic()
        self._running = threading.Event()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._started = time.monotonic() - self.emitted / self.rate_hz if self.rate_hz else 0
        self._running.set()

    @property
    def exhausted(self) -> bool:
        return self.emitted >= self.total

    def read(self, timeout: float) -> list[Reading]:
        if not self._running.wait(timeout) or self.exhausted:
            return []
        if self.rate_hz:
            due = int((time.monotonic() - self._started) * self.rate_hz)
            if due <= self.emitted:
                time.sleep(min(timeout, 1.0 / self.rate_hz))
                due = int((time.monotonic() - self._started) * self.rate_hz)
            n = min(due, self.total) - self.emitted
        else:
            n = min(self.batch, self.total - self.emitted)
        out = [Reading(ts=1000.0 + i, values=tuple(float(v) for v in self.value(i)))
               for i in range(self.emitted, self.emitted + max(0, n))]
        self.emitted += len(out)
        return out

    def close(self) -> None:
        self._running.set()


def agent_config(broker: Broker, state_dir: Path, device_id: str, key: SigningKey | None,
                 **sections: dict[str, Any]) -> AgentConfig:
    raw: dict[str, Any] = {
        "device_id": device_id,
        "state_dir": str(state_dir),
        "mqtt": {**broker.agent_mqtt(broker.add_device(device_id)), "keepalive": 5,
                 "reconnect_initial_s": 0.2, "reconnect_max_s": 1.0},
        "trust": {"keys": {key.key_id: key.public_b64()} if key else {}},
        "telemetry": {"batch_max_readings": 20, "batch_max_age_s": 0.2},
        # These tests are about delivery and accounting, not power loss (which none simulates).
        # With "full" every batch and anomaly waits for its own fsync: 4-6 ms (p50) and up to
        # 200 ms on this shared disk. The outbox-overflow test commits ~430 times in a burst and
        # so timed out at 30 s when the disk was busy (reproduced with every fsync delayed by
        # 100 ms: strace -e inject=fsync:delay_exit=100000); WAL still survives a killed process.
        "outbox": {"synchronous": "normal"},
        "model": {"shadow_windows": 0},
        "heartbeat": {"interval_s": 1.0},
        "daemon": {"grace_s": 5.0},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw)


def normal_windows_error(data: bytes) -> float:
    """Largest score the fixture model gives the normal signal (to set thresholds from)."""
    from edge_agent.inference.runtime import TfliteModel

    model = TfliteModel(data)
    rows = np.array([signal_value(i) for i in range(200)], dtype=np.float32) / 0.7
    worst = 0.0
    for start in range(0, 192):
        x = rows[start:start + 8]
        y = model.reconstruct(x).reshape(8, 2)
        worst = max(worst, float(((x - y) ** 2).mean()))
    return worst
