"""The detector: windows, stride, smoothing, events with the responsible channels, swaps."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.detect.detector import Detector, LoadedModel
from edge_agent.models.loader import load_model
from edge_agent.sources.base import Reading
from shared.signing import generate_signing_key
from tests.edge_agent.support import CHANNELS, fixture_bytes, make_manifest, signal_value

DATA = fixture_bytes("ae_float32_w8c2.tflite")
KEY = generate_signing_key()


def _model(**manifest_args: object) -> LoadedModel:
    manifest = make_manifest(KEY, DATA, **manifest_args)  # type: ignore[arg-type]
    return load_model(manifest, DATA, channels=CHANNELS)


def _run(detector: Detector, n: int, spike_at: range = range(0), spike: float = 8.0) -> list:
    events = []
    for i in range(n):
        a, b = signal_value(i)
        if i in spike_at:
            a += spike
        event = detector.push(Reading(1000.0 + i, (a, b)))
        if event is not None:
            events.append(event)
    return events


def test_no_anomaly_while_no_model_is_active() -> None:
    detector = Detector(CHANNELS)
    assert _run(detector, 100, spike_at=range(50, 60)) == []
    assert detector.windows_scored == 0


def test_spike_raises_one_event_naming_the_channel() -> None:
    detector = Detector(CHANNELS, realert_windows=100)
    detector.activate(_model(threshold=0.2))
    events = _run(detector, 200, spike_at=range(100, 103))
    assert len(events) == 1, "one event per episode"
    event = events[0]
    assert event.channels[0] == "a"
    assert event.ts == (1093.0, 1100.0), "the first window holding the spike"
    assert event.score > event.threshold == 0.2
    assert event.model.version == 1
    p50, p99 = detector.inference_us()
    assert p50 is not None and p99 is not None and p99 >= p50 > 0


def test_long_anomaly_re_alerts_every_realert_windows() -> None:
    detector = Detector(CHANNELS, realert_windows=10)
    detector.activate(_model(threshold=0.2))
    events = _run(detector, 200, spike_at=range(100, 140), spike=20.0)
    assert 4 <= len(events) <= 5


def test_stride_scores_every_nth_window() -> None:
    detector = Detector(CHANNELS)
    detector.activate(_model(threshold=0.2, stride=4))
    _run(detector, 8 + 40)
    assert detector.windows_scored == 11  # windows ending at readings 8, 12, ..., 48


def test_model_channels_are_picked_from_the_source_by_name() -> None:
    detector = Detector(["noise", "b", "a"])
    manifest = make_manifest(KEY, DATA, threshold=0.2)
    detector.activate(load_model(manifest, DATA, channels=["noise", "b", "a"]))
    events = []
    for i in range(100):
        a, b = signal_value(i)
        event = detector.push(Reading(float(i), (1e6 * (i % 2), b, a + (9.0 if i == 60 else 0))))
        if event is not None:
            events.append(event)
    assert [e.channels[0] for e in events] == ["a"]


class Exploding:
    def reconstruct(self, window: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        raise RuntimeError("tensor arena corrupted")


def test_active_model_that_raises_is_taken_out_and_reported_once() -> None:
    detector = Detector(CHANNELS)
    model = _model(threshold=0.2)
    model.runtime = Exploding()
    detector.activate(model)
    assert _run(detector, 20) == []
    failure = detector.take_failure()
    assert failure is not None and "tensor arena corrupted" in failure[1]
    assert detector.active is None
    assert detector.take_failure() is None


def test_shadow_model_scores_without_raising_events() -> None:
    detector = Detector(CHANNELS)
    detector.activate(_model(threshold=0.2))
    detector.start_shadow(_model(version=2, threshold=0.0))
    events = _run(detector, 50)
    assert events == []
    assert detector.shadow_report.windows == 43
    assert detector.shadow_report.anomalies == 43
