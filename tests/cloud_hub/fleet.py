"""Small stand-in devices for rollout tests: real paho clients that follow `desired`.

Each one fetches the retained manifest and chunks, verifies them against the hub's public key,
and publishes `reported` active; versions listed in ``fail_versions`` report failed instead,
versions in ``noisy_versions`` raise an anomaly event every ``noise_interval_s``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from shared.codec import reassemble
from shared.manifest import Manifest, parse_manifest
from shared.messages import (
    AnomalyEvent,
    Desired,
    DeviceStatus,
    ModelRef,
    ModelState,
    Reported,
    ReportedModel,
    Status,
    decode,
    encode,
    new_epoch,
)
from shared.signing import load_public_key, verify_manifest
from shared.topics import Topics
from simulator.broker import Broker


class FakeDevice:
    def __init__(self, device_id: str, broker: Broker, topics: Topics, key_id: str,
                 public_b64: str,
                 *, fail_versions: set[int] = frozenset(),  # type: ignore[assignment]
                 noisy_versions: set[int] = frozenset(),  # type: ignore[assignment]
                 noise_interval_s: float = 0.1) -> None:
        self.device_id = device_id
        self.topics = topics
        self._pinned = {key_id: load_public_key(public_b64)}
        self.fail_versions, self.noisy_versions = fail_versions, noisy_versions
        self._noise_interval = noise_interval_s
        self.active: ReportedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seq = 0
        self.epoch = new_epoch()
        self._manifest: Manifest | None = None
        self._chunks: dict[int, bytes] = {}
        self._wanted: ModelRef | None = None
        self.client = broker.client(broker.add_device(device_id), protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        will = Status(device_id=device_id, state=DeviceStatus.OFFLINE, at=time.time())
        self.client.will_set(topics.status(device_id), encode(will), qos=1, retain=True)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._noise = threading.Thread(target=self._noise_loop, daemon=True)
        self._noise.start()

    # Fake device: work in callbacks is acceptable here, the test drives a handful of them.
    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.topics.desired(self.device_id), qos=1)
        status = Status(device_id=self.device_id, state=DeviceStatus.ONLINE, at=time.time())
        client.publish(self.topics.status(self.device_id), encode(status), qos=1, retain=True)

    def _on_message(self, client: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            if m.topic == self.topics.desired(self.device_id):
                desired = decode(Desired, bytes(m.payload))
                if desired.model is None:
                    return
                if self.active and (self.active.name, self.active.version) == (
                        desired.model.name, desired.model.version):
                    self._report(ModelState.ACTIVE, self.active)
                    return
                self._wanted, self._manifest, self._chunks = desired.model, None, {}
                client.subscribe(self.topics.manifest(desired.model.name,
                                                      desired.model.version), qos=1)
                return
            wanted = self._wanted
            if wanted is None or not m.payload:
                return
            parsed = self.topics.parse(m.topic)
            if (parsed.model_name, parsed.model_version) != (wanted.name, wanted.version):
                return
            if parsed.kind == "manifest":
                manifest = parse_manifest(bytes(m.payload))
                verify_manifest(manifest, self._pinned)
                self._manifest = manifest
                client.unsubscribe(m.topic)
                client.subscribe(self.topics.chunks_filter(wanted.name, wanted.version), qos=1)
            elif parsed.kind == "chunk" and parsed.chunk_index is not None:
                self._chunks[parsed.chunk_index] = bytes(m.payload)
            manifest = self._manifest
            if manifest is None or len(self._chunks) < manifest.chunks.count:
                return
            client.unsubscribe(self.topics.chunks_filter(wanted.name, wanted.version))
            data = reassemble([self._chunks[i] for i in range(manifest.chunks.count)],
                              chunk_hashes=manifest.chunks.sha256, size=manifest.size,
                              sha256=manifest.sha256)
            model = ReportedModel(name=wanted.name, version=wanted.version,
                                  sha256=manifest.sha256)
            self._wanted = None
            if wanted.version in self.fail_versions:
                self._report(ModelState.FAILED, model, error=f"cannot load {len(data)} bytes")
            else:
                self.active = model
                self._report(ModelState.ACTIVE, model)

    def _report(self, state: ModelState, model: ReportedModel, error: str | None = None) -> None:
        reported = Reported(device_id=self.device_id, model=model, state=state, error=error,
                            since=time.time(), active=self.active)
        self.client.publish(self.topics.reported(self.device_id), encode(reported), qos=1,
                            retain=True)

    def _noise_loop(self) -> None:
        while not self._stop.wait(self._noise_interval):
            with self._lock:
                active = self.active
                if active is None or active.version not in self.noisy_versions:
                    continue
                self._seq += 1
                now = time.time()
                event = AnomalyEvent(device_id=self.device_id, epoch=self.epoch, seq=self._seq,
                                     ts=(now - 1, now),
                                     score=9.0, threshold=0.1,
                                     model=ModelRef(name=active.name, version=active.version),
                                     channels=[], detected_at=now)
            self.client.publish(self.topics.anomalies(self.device_id), encode(event), qos=1)

    def close(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
