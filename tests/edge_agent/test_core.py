"""The device core driven by hand: no thread, no broker, no wall clock.

A fake clock, a wire that records what the core hands it, a real SQLite outbox and model store
(with the signature checked in-process), real TFLite fixture models. Each test is what a device
does, step by step: readings become windows, anomalies and batches; a dead link keeps them; a
desired model arrives as manifest and chunks, is verified, shadowed and swapped in; a model that
fails at run time is rolled back and reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
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
from shared.keys import SignatureError
from shared.manifest import Manifest
from shared.messages import (
    Ack,
    AnomalyEvent,
    Desired,
    DeviceStatus,
    Heartbeat,
    HubStatus,
    ModelRef,
    Reported,
    Status,
    StreamAck,
    TelemetryBatch,
    decode,
    encode,
)
from shared.packed import decode_telemetry, is_msgpack
from shared.signing import SigningKey, generate_signing_key, verify_manifest
from tests.edge_agent.support import CHANNELS, TOPICS, fixture_bytes, make_manifest, signal_value

DEVICE = "core-1"
INT8 = fixture_bytes("ae_int8_w8c2.tflite")
NAN = fixture_bytes("nan_float32_w8c2.tflite")


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
def key() -> SigningKey:
    return generate_signing_key()


def test_core_subscribes_and_announces_itself_on_start(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    assert {TOPICS.desired(DEVICE), TOPICS.ack(DEVICE)} <= dev.wire.subscriptions
    online = dev.wire.births[TOPICS.status(DEVICE)]
    assert callable(online) and b'"online"' in online()
    assert dev.core.status().active_model is None


def test_reading_to_anomaly_to_message_without_a_thread(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    dev.desire(make_manifest(key, INT8, threshold=0.2), INT8)
    assert dev.wire.reported().state.value == "active"
    dev.link_up()
    dev.feed(30)
    assert dev.core.status().anomalies_raised == 0, "normal readings raise nothing"
    dev.feed(10, spike=25.0)
    status = dev.core.status()
    assert status.readings == 40 and status.anomalies_raised >= 1
    while dev.core.send_now():  # a window of four at a time
        dev.puback_all()
    anomalies = [decode(AnomalyEvent, p) for _t, p, _m in dev.wire.take("anomalies")]
    assert anomalies and anomalies[0].model.version == 1 and anomalies[0].score > 0.2
    batches = [decode(TelemetryBatch, p) for _t, p, _m in dev.wire.published
               if _t.endswith("/telemetry")]
    assert sum(len(b.ts) for b in batches) == 40, "every reading went out in a batch"


def test_link_down_keeps_messages_and_link_up_sends_them_again(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)
    dev.link_up()
    dev.feed(20)  # two full batches
    assert dev.core.send_now() == 2
    sent = dev.wire.take("telemetry")
    dev.link_down()  # before any PUBACK
    dev.feed(20)
    assert dev.core.send_now() == 0 and not dev.wire.take("telemetry"), "nothing goes out"
    assert dev.core.status().outbox_depth == 4, "all four batches kept"
    dev.link_up()
    dev.core.send_now()
    again = [decode(TelemetryBatch, p).seq for _t, p, _m in dev.wire.published]
    assert again == [0, 1, 2, 3], "the unacknowledged ones first, in order, then the new"
    assert [decode(TelemetryBatch, p).seq for _t, p, _m in sent] == [0, 1]
    dev.puback_all()
    assert dev.core.status().outbox_depth == 4, "a PUBACK alone does not delete"
    dev.hub_acks(telemetry=3)
    status = dev.core.status()
    assert status.outbox_depth == 0 and status.readings_stored == 40
    assert status.batches_sent == 4


def test_window_holds_at_most_max_inflight(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    dev.link_up()
    dev.feed(60)  # six batches, window of four
    assert dev.core.send_now() == 4
    assert dev.core.send_now() == 0, "the window is full until PUBACKs come"
    dev.puback_all()
    dev.wire.published.clear()
    assert dev.core.send_now() == 2


def test_model_update_through_the_core_with_a_shadow_run(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key, model={"shadow_windows": 5})
    v1 = make_manifest(key, INT8, version=1, threshold=0.2)
    dev.desire(v1, INT8)
    assert dev.wire.reported().state.value == "shadow"
    assert dev.core.detector.active is None, "not swapped before the shadow run ends"
    dev.feed(20)
    reported = dev.wire.reported()
    assert reported.state.value == "active" and reported.active is not None
    assert reported.active.version == 1 and reported.active.sha256 == v1.sha256
    assert not any("/models/" in t for t in dev.wire.subscriptions), "download unsubscribed"
    v2 = make_manifest(key, INT8, version=2, threshold=0.2)
    dev.desire(v2, INT8)
    dev.feed(20)
    assert dev.wire.reported().active.version == 2  # type: ignore[union-attr]
    assert dev.core.status().active_model == {"name": "pump-ae", "version": 2,
                                              "sha256": v2.sha256, "variant": "int8"}
    assert dev.core.store.previous() is not None and dev.core.store.previous().version == 1


def test_model_with_a_forged_signature_is_refused_and_reported(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)
    forged = make_manifest(generate_signing_key(), INT8, threshold=0.2)
    with pytest.raises(SignatureError):
        verify_manifest(forged, {key.key_id: key.public_raw})
    ref = ModelRef(name=forged.name, version=forged.version)
    dev.deliver(TOPICS.desired(DEVICE), encode(Desired(device_id=DEVICE, model=ref,
                                                       issued_at=dev.clock.time())))
    dev.deliver(TOPICS.manifest(forged.name, forged.version), forged.to_bytes())
    reported = dev.wire.reported()
    assert reported.state.value == "failed" and reported.error is not None
    assert dev.core.detector.active is None
    assert dev.core.status().bad_messages == 1


def test_model_failing_at_run_time_is_rolled_back_and_reported(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)
    dev.desire(make_manifest(key, INT8, version=1, threshold=0.2), INT8)
    dev.desire(make_manifest(key, NAN, version=2, threshold=0.2), NAN)
    assert dev.core.detector.active is not None
    assert dev.core.detector.active.manifest.version == 2
    dev.feed(12)  # the tick takes the failure and rolls back
    reported = dev.wire.reported()
    assert reported.state.value == "rolled_back"
    assert reported.model is not None and reported.model.version == 2
    assert reported.active is not None and reported.active.version == 1
    assert reported.error is not None and "non-finite" in reported.error
    status = dev.core.status()
    assert status.model_state == "rolled_back" and status.last_error == reported.error
    windows = dev.core.detector.windows_scored
    dev.feed(10)
    assert dev.core.detector.windows_scored > windows, "the previous model scores again"


def test_heartbeat_is_due_on_the_clock_and_says_what_the_status_says(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)
    dev.link_up()
    dev.core.tick()
    assert not dev.wire.take("heartbeat"), "not due yet"
    dev.clock.advance(5.0)
    dev.core.tick()
    beats = [decode(Heartbeat, p) for _t, p, _m in dev.wire.take("heartbeat")]
    assert len(beats) == 1 and beats[0].outbox_depth == dev.core.status().outbox_depth
    assert beats[0].at == pytest.approx(dev.clock.time())


def test_bad_messages_are_counted_not_raised(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    dev.deliver(TOPICS.desired(DEVICE), b"{not json")
    dev.deliver(TOPICS.ack(DEVICE), b'{"v": 1}')
    dev.deliver("elsewhere/entirely", b"x")
    dev.core.on_readings([Reading(float("nan"), (1.0, 2.0)), Reading(1.0, (1.0,))])
    status = dev.core.status()
    assert status.bad_messages == 3 and status.bad_readings == 2 and status.readings == 0


def test_stale_time_does_not_flush_a_batch_until_its_age(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    dev.core.on_readings([Reading(time.time(), (0.0, 0.0))])
    dev.core.tick()
    assert dev.core.status().outbox_depth == 0
    dev.clock.advance(1.0)
    dev.core.tick()
    assert dev.core.status().outbox_depth == 1, "the batch is written at batch_max_age_s"


def test_the_first_status_names_the_installed_runtime_before_any_model_loads(
    tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device that has loaded no model yet tells the hub its runtime from its first status
    (so the hub sends a tflite-runtime device float32 from its first model on); the load that
    follows names the same runtime, and the status is not announced again for it."""
    import edge_agent.inference.runtime as runtime

    monkeypatch.setattr(runtime, "_cached", None)  # as in a process that has loaded no model
    dev = Device(tmp_path, key, model={"shadow_windows": 0})
    first = dev.wire.births[TOPICS.status(DEVICE)]
    assert callable(first)
    told = decode(Status, first()).runtime
    package = runtime.load_interpreter_class()[0]
    assert told is not None and told.package == package
    assert told.xnnpack_int8 == (package == "ai_edge_litert")
    assert told.version, "the version its .dist-info names"
    dev.desire(make_manifest(key, INT8, version=1, threshold=0.2), INT8)
    assert dev.wire.reported().state.value == "active"
    assert runtime.loaded_runtime() == told, "what loads is what was installed"
    assert dev.wire.births[TOPICS.status(DEVICE)] is first, "nothing new to announce"


def test_the_status_is_announced_again_when_the_loaded_runtime_is_another(
    tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package that is not the one that loads (or no runtime found before the
    load): the first model load names the real one and the status is announced again at once."""
    import edge_agent.inference.runtime as runtime

    monkeypatch.setattr(runtime, "_cached", None)
    import edge_agent.core

    monkeypatch.setattr(edge_agent.core, "installed_runtime", lambda: None)
    dev = Device(tmp_path, key, model={"shadow_windows": 0})
    first = dev.wire.births[TOPICS.status(DEVICE)]
    assert callable(first) and decode(Status, first()).runtime is None
    assert b"runtime" not in first(), "left out, so hubs of earlier builds accept it"
    dev.desire(make_manifest(key, INT8, version=1, threshold=0.2), INT8)
    assert dev.wire.reported().state.value == "active"
    again = dev.wire.births[TOPICS.status(DEVICE)]
    assert again is not first, "the status is announced again once the runtime is known"
    assert callable(again)
    told = decode(Status, again()).runtime
    assert told is not None and told.package == runtime.load_interpreter_class()[0]
    assert told.version, "the package's own version"


def test_msgpack_telemetry_carries_the_same_readings_and_its_floor_when_sent_again(
    tmp_path: Path, key: SigningKey
) -> None:
    """``[telemetry] encoding = "msgpack"``: the batches go out as MessagePack
    (shared/packed.py) with every reading as JSON would carry it, and a batch sent again after
    the link came back has its floor set in that encoding."""
    dev = Device(tmp_path, key, telemetry={"batch_max_readings": 10, "encoding": "msgpack"})
    dev.link_up()
    dev.feed(20)
    assert dev.core.send_now() == 2
    first = [p for _t, p, _m in dev.wire.take("telemetry")]
    assert all(is_msgpack(p) for p in first)
    dev.link_down()
    dev.link_up()
    dev.core.send_now()
    again = [decode_telemetry(p) for _t, p, _m in dev.wire.take("telemetry")]
    assert [b.seq for b in again] == [0, 1] and [b.floor for b in again] == [0, 0]
    rows = [r for b in map(decode_telemetry, first) for r in b.to_batch().values]
    assert rows == [list(signal_value(i)) for i in range(20)]


def test_auto_sends_msgpack_while_every_hub_online_reads_it_and_json_otherwise(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)  # [telemetry] encoding left at its default, auto
    assert dev.core.config.telemetry.encoding == "auto"
    dev.link_up()

    def sent_in(readings: int) -> list[bool]:
        dev.feed(readings)
        while dev.core.send_now():
            dev.puback_all()
        return [is_msgpack(p) for _t, p, _m in dev.wire.take("telemetry")]

    def hub(hub_id: str, properties: list[tuple[str, str]]) -> None:
        record = encode(HubStatus(device_id=hub_id, state=DeviceStatus.ONLINE,
                                  session="aaaa0001", at=1.0))
        dev.core.on_message(TOPICS.hub_status(hub_id), record, retain=True,
                            properties=properties)

    assert sent_in(10) == [False], "no hub heard yet: JSON"
    hub("hub-1", [("encodings", "json msgpack")])
    assert sent_in(10) == [True]
    hub("hub-2", [])  # a hub of an earlier build comes online
    assert sent_in(10) == [False]
