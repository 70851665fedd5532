"""The detector: windows, stride, smoothing, events with the responsible channels, swaps."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.detect.detector import Detector
from edge_agent.detect.records import LoadedModel
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


class _Scores:
    def __init__(self) -> None:
        self.seen: list[tuple[tuple[float, float], float]] = []

    def model_changed(self, model: object, threshold: float) -> None:
        pass

    def window_scored(self, *, ts: tuple[float, float], score: float, threshold: float,
                      anomalous: bool) -> None:
        self.seen.append((ts, score))


def test_streamed_scores_equal_the_offline_scores_of_every_window() -> None:
    """Readings arrive before any model (the ring holds one and wraps), the model then grows
    the ring keeping that reading, and the ring wraps many times: every window's span and score
    is the one the hub's batch path gives."""
    from edge_agent.inference.runtime import TfliteModel
    from shared.scoring import normalize, sliding_windows, window_scores

    scores = _Scores()
    detector = Detector(["noise", "b", "a"], observer=scores)
    manifest = make_manifest(KEY, DATA, threshold=1e9)
    rng = np.random.default_rng(5)
    rows = [(float(rng.normal()), *signal_value(i)[::-1]) for i in range(120)]
    for i, row in enumerate(rows):
        if i == 30:
            detector.activate(load_model(manifest, DATA, channels=["noise", "b", "a"]))
        if i == 60:
            shadow = make_manifest(KEY, DATA, version=2)
            detector.start_shadow(load_model(shadow, DATA, channels=["noise", "b", "a"]))
        detector.push(Reading(1000.0 + i, row))
    readings = np.asarray(rows, dtype=np.float32)[29:, [2, 1]]  # the model's channels a, b
    windows = normalize(sliding_windows(readings, 8), manifest.normalization)
    expected = window_scores(windows, TfliteModel(DATA).reconstruct_many(windows), manifest.score)
    assert [span for span, _ in scores.seen] == [(1029.0 + i, 1036.0 + i) for i in range(84)]
    np.testing.assert_array_equal(np.asarray([score for _, score in scores.seen]), expected)
    assert detector.shadow_report.windows == 60


class _ZeroReconstruction:
    """A model whose reconstruction is all zeros: a window's mse is the mean of its squares."""

    def reconstruct(self, window: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        return np.zeros(np.size(window), dtype=np.float32)


def test_short_window_reads_the_right_readings_while_a_longer_shadow_grows_the_ring() -> None:
    scores = _Scores()
    detector = Detector(CHANNELS, observer=scores)
    rows = [signal_value(i) for i in range(40)]

    def model(window: int, version: int) -> LoadedModel:
        manifest = make_manifest(KEY, DATA, window=window, version=version)
        return LoadedModel(manifest=manifest, runtime=_ZeroReconstruction(), threshold=1e9,
                           channel_index=[0, 1])

    for i, row in enumerate(rows):
        if i == 3:
            detector.activate(model(4, 1))  # the ring of 1 grows to 4, keeping reading 2
        if i == 5:
            detector.start_shadow(model(12, 2))  # grows to 12, keeping readings 2..4
        detector.push(Reading(100.0 + i, row))
    x = np.asarray(rows, dtype=np.float32) / np.float32(0.7)  # make_manifest: center 0, scale 0.7
    expected = [float(np.mean(x[i - 3 : i + 1].astype(np.float64) ** 2)) for i in range(5, 40)]
    assert [span for span, _ in scores.seen] == [(97.0 + i, 100.0 + i) for i in range(5, 40)]
    assert [score for _, score in scores.seen] == pytest.approx(expected, rel=1e-6)
    assert detector.shadow_report.windows == 40 - 13  # from reading 13: 12 readings since 2


class _Plain:
    """A model through ``reconstruct`` only: the detector's path for any other Reconstructor
    (a copy in, a copy out), which the in-place path must match."""

    def __init__(self, data: bytes) -> None:
        from edge_agent.inference.runtime import TfliteModel

        self.model = TfliteModel(data)

    def reconstruct(self, window: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        return self.model.reconstruct(window)


@pytest.mark.parametrize("name", ["ae_int8float_w8c2", "ae_float32_w8c2", "ae_int8_w8c2"])
@pytest.mark.parametrize("smoothing", [1, 3])
def test_the_in_place_path_scores_and_alerts_like_the_plain_path(name: str, smoothing: int) -> None:
    """Real converted models (int8 as the hub publishes it, float32, int8 tensors): the window
    normalized into the input tensor and scored from the output tensor gives the scores,
    spans and anomalies (with their channels) of the copy-in, copy-out path, bit for bit, and
    the hub's offline scores of every window (its smoothing rounds otherwise)."""
    from edge_agent.detect.records import InPlaceReconstructor
    from edge_agent.inference.runtime import TfliteModel
    from shared.scoring import normalize, sliding_windows, smooth, window_scores

    data = fixture_bytes(f"{name}.tflite")
    manifest = make_manifest(KEY, data, threshold=0.05, smoothing=smoothing)
    fast = load_model(manifest, data, channels=CHANNELS)
    assert isinstance(fast.runtime, InPlaceReconstructor)
    plain = LoadedModel(manifest=manifest, runtime=_Plain(data), threshold=0.05,
                        channel_index=[0, 1])
    assert not isinstance(plain.runtime, InPlaceReconstructor)
    seen: dict[str, tuple[_Scores, list]] = {}
    for label, model in (("fast", fast), ("plain", plain)):
        scores = _Scores()
        detector = Detector(CHANNELS, observer=scores, realert_windows=5, clock=lambda: 0.0)
        detector.activate(model)
        seen[label] = (scores, _run(detector, 150, spike_at=range(40, 43)))
    (fast_scores, fast_events), (plain_scores, plain_events) = seen["fast"], seen["plain"]
    assert fast_scores.seen == plain_scores.seen and len(fast_scores.seen) == 143
    assert fast_events and fast_events == plain_events
    rows = [signal_value(i) for i in range(150)]
    for i in range(40, 43):
        rows[i] = (rows[i][0] + 8.0, rows[i][1])
    windows = normalize(sliding_windows(np.asarray(rows, dtype=np.float32), 8),
                        manifest.normalization)
    offline = window_scores(windows, TfliteModel(data).reconstruct_many(windows), manifest.score)
    # the hub smooths by cumulative sums, the device by the mean of its last scores
    np.testing.assert_allclose([s for _, s in fast_scores.seen], smooth(offline, smoothing),
                               rtol=1e-9 if smoothing > 1 else 0)
