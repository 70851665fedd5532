"""Fixtures for the edge tests: a signing key (the hub's), a hub stand-in and a collector (the
broker is tests/conftest.py's), and a device core driven by hand (a fake clock, a wire that
records what the core hands it) for test_core.py, test_core_models.py and test_update_budget.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentConfig, config_from_dict
from edge_agent.core import DeviceCore
from edge_agent.models.loader import load_model
from edge_agent.models.store import ManifestVerifier, ModelStore
from edge_agent.models.updater import UNLIMITED, StepBudget
from edge_agent.sources.base import Reading
from edge_agent.telemetry.outbox import Outbox
from edge_agent.trust.keyring import KeyRing
from shared.codec import split
from shared.manifest import Manifest
from shared.messages import Ack, Desired, ModelRef, Reported, StreamAck, decode, encode
from shared.signing import SigningKey, generate_signing_key, verify_manifest
from simulator.broker import Broker
from tests.edge_agent.support import (
    CHANNELS,
    TOPICS,
    Collector,
    HubStandIn,
    fixture_bytes,
    signal_value,
)

DEVICE = "core-1"
INT8 = fixture_bytes("ae_int8_w8c2.tflite")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeWire:
    """Records what the core publishes and subscribes to; message ids count up."""

    def __init__(self) -> None:
        self.connected = False
        self.published: list[tuple[str, bytes, int]] = []
        self.births: dict[str, bytes | Callable[[], bytes]] = {}
        self.subscriptions: set[str] = set()
        self.subscribed: list[str] = []
        self._mid = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> int | None:
        if not self.connected:
            return None
        self._mid += 1
        self.published.append((topic, payload, self._mid))
        return self._mid

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.subscriptions.add(topic_filter)
        self.subscribed.append(topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        self.subscriptions.discard(topic_filter)

    def set_birth(self, topic: str, payload: bytes | Callable[[], bytes]) -> None:
        self.births[topic] = payload

    def take(self, kind: str) -> list[tuple[str, bytes, int]]:
        out = [p for p in self.published if p[0].endswith("/" + kind)]
        self.published = [p for p in self.published if not p[0].endswith("/" + kind)]
        return out

    def reported(self) -> Reported:
        payload = self.births[TOPICS.reported(DEVICE)]
        assert isinstance(payload, bytes)
        return decode(Reported, payload)


def _in_process(manifest: Manifest, keys: Mapping[str, bytes]) -> None:
    verify_manifest(manifest, keys)


def _config(state: Path, key: SigningKey, **sections: dict[str, Any]) -> AgentConfig:
    raw: dict[str, Any] = {
        "device_id": DEVICE, "state_dir": str(state),
        "trust": {"keys": {key.key_id: key.public_b64()}},
        "telemetry": {"batch_max_readings": 10, "batch_max_age_s": 1.0},
        "outbox": {"synchronous": "normal", "max_inflight": 4},
        "model": {"shadow_windows": 0},
        "heartbeat": {"interval_s": 5.0},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw)


class Device:
    """One core with its collaborators, as the daemon wires them but without threads;
    ``update_budget`` and ``verify`` as a many-device loop or a test hands them in."""

    def __init__(self, state: Path, key: SigningKey, *, update_budget: StepBudget = UNLIMITED,
                 verify: ManifestVerifier = _in_process, **sections: dict[str, Any]) -> None:
        self.clock = FakeClock()
        self.wire = FakeWire()
        config = _config(state, key, **sections)
        self.outbox = Outbox(state / "outbox.db", synchronous="normal", clock=self.clock.time,
                             ack_timeout_s=config.outbox.ack_timeout_s)
        trust = KeyRing({key.key_id: key.public_raw}, state / "trust.json",
                        verify=lambda checks: [False for _ in checks])
        self.core = DeviceCore(
            config, channels=CHANNELS, outbox=self.outbox,
            store=ModelStore(state / "models", trust, verify=verify), trust=trust,
            loader=lambda m, d: load_model(m, d, channels=CHANNELS), wire=self.wire,
            clock=self.clock, update_budget=update_budget,
        )
        self.core.start()
        self.i = 0
        self.pubacked: set[int] = set()

    def feed(self, n: int, spike: float = 0.0) -> None:
        """``n`` readings at 10 Hz, one tick after each."""
        for _ in range(n):
            a, b = signal_value(self.i)
            self.i += 1
            self.clock.advance(0.1)
            self.core.on_readings([Reading(1_700_000_000.0 + self.i / 10, (a + spike, b))])
            self.core.tick()

    def deliver(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        self.core.on_message(topic, payload, retain=retain)

    def desire(self, manifest: Manifest, data: bytes) -> None:
        """The hub's retained desired, then what the broker sends for each subscription."""
        ref = ModelRef(name=manifest.name, version=manifest.version)
        self.deliver(TOPICS.desired(DEVICE), encode(Desired(
            device_id=DEVICE, model=ref, issued_at=self.clock.time())))
        manifest_topic = TOPICS.manifest(manifest.name, manifest.version)
        assert manifest_topic in self.wire.subscriptions
        self.deliver(manifest_topic, manifest.to_bytes())
        for i, chunk in enumerate(split(data, manifest.chunk_size)):
            topic = TOPICS.chunk(manifest.name, manifest.version, i)
            assert topic in self.wire.subscriptions, f"chunk {i} was asked for"
            self.deliver(topic, chunk)

    def link_up(self) -> None:
        self.wire.connected = True
        self.core.on_link_up()

    def link_down(self) -> None:
        self.wire.connected = False
        self.core.on_link_down("test")

    def puback_all(self) -> None:
        for _topic, _payload, mid in self.wire.published:
            if mid not in self.pubacked:
                self.pubacked.add(mid)
                self.core.on_puback(mid, True)

    def hub_acks(self, telemetry: int, anomalies: int = -1) -> None:
        ack = Ack(device_id=DEVICE, epoch=self.outbox.epoch, at=self.clock.time(),
                  telemetry=StreamAck(watermark=telemetry, top=telemetry),
                  anomalies=StreamAck(watermark=anomalies, top=anomalies))
        self.deliver(TOPICS.ack(DEVICE), encode(ack), retain=False)


@pytest.fixture
def signing_key() -> SigningKey:
    return generate_signing_key()


@pytest.fixture
def key(signing_key: SigningKey) -> SigningKey:
    """``signing_key`` under the name the tests of the hand-driven core give it."""
    return signing_key


@pytest.fixture
def hub(broker: Broker) -> Iterator[HubStandIn]:
    stand_in = HubStandIn(broker)
    yield stand_in
    stand_in.close()


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    c = Collector(broker)
    yield c
    c.close()
