"""The model updater on its own: resumable chunk download, re-fetch of a bad chunk, shadow gate,
calibration, rollback. A small fake link records subscriptions; store, detector and
interpreter are real."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from edge_agent.config import ModelSettings
from edge_agent.detect.detector import Detector
from edge_agent.models.loader import load_model
from edge_agent.models.report import ModelReport
from edge_agent.models.store import ModelStore, TrustedKeys
from edge_agent.models.updater import ModelUpdater
from edge_agent.sources.base import Reading
from shared.codec import split
from shared.manifest import Manifest
from shared.messages import ModelRef, ModelState
from shared.signing import SigningKey, generate_signing_key
from tests.edge_agent.support import (
    CHANNELS,
    TOPICS,
    fixture_bytes,
    make_manifest,
    signal_value,
)

DATA = fixture_bytes("ae_int8_w8c2.tflite")


class RecordingLink:
    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.active: set[str] = set()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.subscribed.append(topic_filter)
        self.active.add(topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        self.active.discard(topic_filter)


class Rig:
    def __init__(self, root: Path, key: SigningKey, *, keys: TrustedKeys | None = None,
                 **settings: object) -> None:
        self.link = RecordingLink()
        self.reports: list[ModelReport] = []
        self.store = ModelStore(root, keys or {key.key_id: key.public_raw})
        self.detector = Detector(CHANNELS)
        self.updater = ModelUpdater(
            store=self.store, topics=TOPICS, link=self.link, detector=self.detector,
            loader=lambda m, d: load_model(m, d, channels=CHANNELS),
            settings=msgspec.convert({"shadow_windows": 0, **settings}, ModelSettings),
            on_report=self.reports.append,
        )
        self.i = 0

    def deliver(self, topic: str, payload: bytes) -> None:
        self.updater.on_message(TOPICS.parse(topic), payload)

    def publish(self, manifest: Manifest, data: bytes, only: list[int] | None = None) -> None:
        self.deliver(TOPICS.manifest(manifest.name, manifest.version), manifest.to_bytes())
        for i, chunk in enumerate(split(data, manifest.chunk_size)):
            if only is None or i in only:
                self.deliver(TOPICS.chunk(manifest.name, manifest.version, i), chunk)

    def feed(self, n: int, spike: float = 0.0) -> None:
        for _ in range(n):
            a, b = signal_value(self.i)
            self.i += 1
            self.detector.push(Reading(float(self.i), (a + spike, b)))
            self.updater.tick()

    @property
    def states(self) -> list[str]:
        return [r.state.value for r in self.reports]


def test_download_resumes_with_the_missing_chunks_only(tmp_path: Path) -> None:
    key = generate_signing_key()
    manifest = make_manifest(key, DATA)
    first = Rig(tmp_path, key)
    first.updater.want(ModelRef(name="pump-ae", version=1))
    first.publish(manifest, DATA, only=[0, 1])
    assert first.detector.active is None, "not active with half the chunks"

    again = Rig(tmp_path, key)  # the agent restarted
    again.updater.want(ModelRef(name="pump-ae", version=1))
    chunk_topics = [t for t in again.link.subscribed if "/chunks/" in t]
    assert chunk_topics == [TOPICS.chunk("pump-ae", 1, i) for i in (2, 3)]
    assert TOPICS.manifest("pump-ae", 1) not in again.link.subscribed, "manifest kept on disk"
    again.publish(manifest, DATA, only=[2, 3])
    assert again.detector.active is not None
    assert again.states[-1] == "active"
    assert not any("/models/" in t for t in again.link.active), "download subscriptions dropped"


def test_bad_chunk_is_discarded_and_fetched_again(tmp_path: Path) -> None:
    key = generate_signing_key()
    manifest = make_manifest(key, DATA)
    rig = Rig(tmp_path, key, chunk_retries=2)
    rig.updater.want(ModelRef(name="pump-ae", version=1))
    topic = TOPICS.chunk("pump-ae", 1, 2)
    rig.deliver(TOPICS.manifest("pump-ae", 1), manifest.to_bytes())
    rig.deliver(topic, b"garbage" * 100)
    assert rig.link.subscribed.count(topic) == 2, "re-subscribed to fetch the retained chunk"
    assert 2 in rig.store.missing_chunks(manifest), "the bad chunk was not kept"
    rig.publish(manifest, DATA)
    assert rig.states[-1] == "active"


def test_shadow_run_refuses_a_model_that_flags_too_much(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key, shadow_windows=10, max_shadow_anomaly_rate=0.2)
    good = make_manifest(key, DATA, version=1, threshold=0.2)
    rig.updater.want(ModelRef(name="pump-ae", version=1))
    rig.publish(good, DATA)
    rig.feed(30)
    assert rig.states[-2:] == ["shadow", "active"]
    jumpy = make_manifest(key, DATA, version=2, threshold=0.0001)
    rig.updater.want(ModelRef(name="pump-ae", version=2))
    rig.publish(jumpy, DATA)
    assert rig.states[-1] == "shadow"
    assert rig.detector.active is not None and rig.detector.active.manifest.version == 1
    rig.feed(12)
    assert rig.states[-1] == "failed"
    assert ("10 of 10 windows flagged that the running model did not flag (rate 1.000) "
            "exceeds the bound 0.200") in str(rig.reports[-1].error)
    assert rig.detector.active.manifest.version == 1
    assert rig.store.current() is not None and rig.store.current().version == 1


def test_a_fault_during_the_shadow_run_that_both_models_flag_does_not_refuse_the_new_one(
    tmp_path: Path,
) -> None:
    """The device is in a real fault while it updates: the running model flags every window,
    and so does the new one. Those windows say nothing against the new model (the fleet bench
    once refused a rollout on one device for this)."""
    key = generate_signing_key()
    rig = Rig(tmp_path, key, shadow_windows=10, max_shadow_anomaly_rate=0.2)
    rig.updater.want(ModelRef(name="pump-ae", version=1))
    rig.publish(make_manifest(key, DATA, version=1, threshold=0.2), DATA)
    rig.feed(30)
    assert rig.states[-1] == "active"
    rig.updater.want(ModelRef(name="pump-ae", version=2))
    rig.publish(make_manifest(key, DATA, version=2, threshold=0.2), DATA)
    assert rig.states[-1] == "shadow"
    rig.feed(12, spike=20.0)
    report = rig.detector.shadow_report
    assert rig.states[-1] == "active", rig.reports[-1].error
    assert rig.detector.active is not None and rig.detector.active.manifest.version == 2
    assert report.windows == 10 and report.anomalies == 10 and report.shared == 10


def test_model_failing_at_run_time_is_rolled_back_automatically(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key)
    good = make_manifest(key, DATA, version=1, threshold=0.2)
    rig.updater.want(ModelRef(name="pump-ae", version=1))
    rig.publish(good, DATA)
    nan_data = fixture_bytes("nan_float32_w8c2.tflite")
    broken = make_manifest(key, nan_data, version=2, threshold=0.2)
    rig.updater.want(ModelRef(name="pump-ae", version=2))
    rig.publish(broken, nan_data)
    assert rig.detector.active is not None and rig.detector.active.manifest.version == 2
    rig.feed(10)
    failure = rig.detector.take_failure()
    assert failure is not None and "non-finite" in failure[1]
    rig.updater.on_runtime_failure(*failure)
    last = rig.reports[-1]
    assert last.state is ModelState.ROLLED_BACK
    assert last.model is not None and last.model.version == 2
    assert last.active is not None and last.active.version == 1
    assert rig.detector.active is not None and rig.detector.active.manifest.version == 1
    assert rig.store.current() is not None and rig.store.current().version == 1
    rig.feed(10)
    assert rig.detector.take_failure() is None, "the previous model runs fine again"


def test_calibration_sets_and_persists_a_device_threshold(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key, calibration_windows=50, calibration_quantile=0.9,
              calibration_factor=2.0)
    manifest = make_manifest(key, DATA, threshold=5.0)
    rig.updater.want(ModelRef(name="pump-ae", version=1))
    rig.publish(manifest, DATA)
    rig.feed(60)
    active = rig.detector.active
    assert active is not None and active.threshold_source == "calibrated"
    assert active.threshold < 1.0, "a threshold from this device's own scores, not 5.0"
    assert rig.reports[-1].threshold == pytest.approx(active.threshold)
    saved = rig.store.load_calibration(manifest)
    assert saved is not None and saved["threshold"] == pytest.approx(active.threshold)

    restarted = Rig(tmp_path, key, calibration_windows=50)
    restarted.updater.load_current()
    assert restarted.detector.active is not None
    assert restarted.detector.active.threshold == pytest.approx(active.threshold)
    assert restarted.detector.calibration is None, "not calibrated again after a restart"
