"""On-device adaptation: follows slow change, learns only from normal windows, at a bounded rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest

from edge_agent.config import ConfigError, config_from_dict, load_config
from edge_agent.detect.adaptation import (
    Adaptation,
    AdaptationSettings,
    AdaptiveNormalization,
    AdaptiveThreshold,
)
from edge_agent.detect.detector import Detector
from edge_agent.detect.records import LoadedModel
from edge_agent.models.loader import load_model
from edge_agent.sources.base import Reading
from shared.manifest import Normalization
from shared.signing import generate_signing_key
from tests.edge_agent.support import CHANNELS, fixture_bytes, make_manifest, signal_value

BASE = Normalization(method="zscore", center=[10.0, 0.0], scale=[2.0, 1.0])
KEY = generate_signing_key()
MODEL = fixture_bytes("ae_int8_w8c2.tflite")


def _settings(**changes: object) -> AdaptationSettings:
    return msgspec.structs.replace(AdaptationSettings(), **changes)


def test_adaptation_is_off_by_default_and_in_the_agent_config() -> None:
    assert not AdaptationSettings().enabled
    config = config_from_dict({"device_id": "d"})
    assert config.adaptation == AdaptationSettings()
    on = config_from_dict({"device_id": "d", "adaptation": {"normalization": True, "rate": 0.01}})
    assert on.adaptation.enabled and on.adaptation.rate == 0.01
    example = Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml"
    assert load_config(example).adaptation == AdaptationSettings()  # documents every default


@pytest.mark.parametrize(
    ("section", "key"),
    [({"rate": 0.0}, "adaptation.rate"), ({"rate": 0.9}, "adaptation.rate"),
     ({"threshold_quantile": 1.0}, "adaptation.threshold_quantile"),
     ({"scale_min": 2.0}, "adaptation.scale_min"), ({"learn": True}, "adaptation.learn")],
)
def test_bad_adaptation_settings_name_the_key(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"device_id": "d", "adaptation": section})


def test_center_follows_a_slow_shift() -> None:
    norm = AdaptiveNormalization(BASE, _settings(normalization=True, rate=0.01))
    rng = np.random.default_rng(0)
    for i in range(3000):  # channel 0 moves from 10 to 16 (3 spreads) over 3,000 readings
        norm.learn(np.array([[10.0 + 6.0 * i / 3000 + rng.normal(0, 2.0), rng.normal()]]))
    assert norm.center[0] == pytest.approx(16.0, abs=1.0)
    assert norm.center[1] == pytest.approx(0.0, abs=0.5)
    assert norm.scale.tolist() == [2.0, 1.0]  # scale_rate 0: the spread stays the model's


def test_center_moves_at_most_rate_times_clip_spreads_per_reading() -> None:
    settings = _settings(normalization=True, rate=0.01, clip=3.0)
    norm = AdaptiveNormalization(BASE, settings)
    for _ in range(10):
        norm.learn(np.array([[1e6, 0.0]]))  # a wild reading counts as 3 spreads, no more
    # each reading moves the center by at most 0.01 × 3 × 2.0 = 0.06
    assert 10.0 < norm.center[0] <= 10.0 + 10 * 0.06 + 1e-9


def test_spread_follows_only_when_asked_and_stays_within_bounds() -> None:
    norm = AdaptiveNormalization(
        BASE, _settings(normalization=True, rate=0.01, scale_rate=0.05, scale_max=1.5)
    )
    rng = np.random.default_rng(1)
    for _ in range(2000):  # channel 1 becomes five times noisier
        norm.learn(np.array([[10.0, rng.normal(0, 5.0)]]))
    assert norm.scale[1] == pytest.approx(1.5)  # capped at 1.5 × the model's spread


def _lognormal_scores(n: int, seed: int = 0) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(-3.0, 0.5, n))


def test_threshold_keeps_the_models_during_warmup_then_follows_the_quantile() -> None:
    settings = _settings(threshold=True, threshold_quantile=0.99, threshold_factor=1.2,
                         threshold_warmup_windows=500, threshold_min=0.01, threshold_max=100.0)
    threshold = AdaptiveThreshold(1.0, settings)
    scores = _lognormal_scores(4000)
    for s in scores[:499]:
        threshold.learn(float(s))
    assert threshold.value == 1.0  # warm-up: the model's threshold
    for s in scores[499:]:
        threshold.learn(float(s))
    expected = 1.2 * math.exp(-3.0 + 2.326 * 0.5)  # 1.2 × the 99th percentile of the scores
    assert threshold.value == pytest.approx(expected, rel=0.08)


def test_threshold_rises_only_when_enough_normal_windows_score_higher() -> None:
    settings = _settings(threshold=True, threshold_quantile=0.99, threshold_factor=1.2,
                         threshold_rate=0.001, threshold_warmup_windows=100,
                         threshold_min=0.01, threshold_max=100.0)
    threshold = AdaptiveThreshold(1.0, settings)
    for s in _lognormal_scores(3000):
        threshold.learn(float(s))
    before = threshold.value
    for _ in range(2):  # two higher scores weigh 0.2 %, a fifth of the top 1 %
        threshold.learn(before * 0.95)
    assert threshold.value < 1.08 * before
    for _ in range(500):  # half a thousand of them (each weighs 0.1 %) move the quantile up
        threshold.learn(before * 0.95)
    assert threshold.value > 1.1 * before


def test_threshold_stays_within_its_bounds() -> None:
    settings = _settings(threshold=True, threshold_warmup_windows=10, threshold_min=0.5,
                         threshold_max=2.0)
    low = AdaptiveThreshold(1.0, settings)
    high = AdaptiveThreshold(1.0, settings)
    for _ in range(200):
        low.learn(1e-6)
        high.learn(100.0)
    assert low.value == 0.5 and high.value == 2.0


def _gate(**changes: object) -> Adaptation:
    settings = _settings(normalization=True, rate=0.1, holdoff_windows=3, **changes)
    return Adaptation(settings, BASE, threshold=1.0)


def test_gate_learns_nothing_while_anomalous_nor_during_the_holdoff() -> None:
    adaptation = _gate()
    far = np.array([[30.0, 0.0]])
    assert adaptation.observe(5.0, True, far) is False
    for _ in range(3):  # hold-off after the anomaly
        assert adaptation.observe(0.1, False, far) is False
    assert adaptation.normalization is not None
    assert adaptation.normalization.center[0] == 10.0
    assert adaptation.observe(0.1, False, far) is True
    assert adaptation.normalization.center[0] > 10.0


def test_gate_accepts_a_lasting_change_after_max_freeze_windows() -> None:
    adaptation = _gate(max_freeze_windows=5)
    far = np.array([[30.0, 0.0]])
    learned = [adaptation.observe(5.0, True, far) for _ in range(8)]
    assert learned == [False] * 5 + [True] * 3


def _model(threshold: float) -> LoadedModel:
    return load_model(make_manifest(KEY, MODEL, threshold=threshold, smoothing=4), MODEL,
                      channels=CHANNELS)


def _events(
    detector: Detector, n: int, offset: Callable[[int], tuple[float, float]]
) -> list[int]:
    rows = []
    for i in range(n):
        a, b = signal_value(i)
        da, db = offset(i)
        if detector.push(Reading(float(i), (a + da, b + db))) is not None:
            rows.append(i)
    return rows


def _slow_shift(i: int) -> tuple[float, float]:
    """A benign change of operating point: both channels move 1.5 units over 2,000 readings."""
    shift = 1.5 * min(i / 2000, 1.0)
    return shift, 0.8 * shift


def test_detector_with_adaptation_follows_a_slow_shift_that_alarms_without_it() -> None:
    settings = AdaptationSettings(normalization=True, rate=0.02)
    fixed = Detector(CHANNELS, realert_windows=200)
    fixed.activate(_model(0.2))
    adaptive = Detector(CHANNELS, realert_windows=200, adaptation=settings)
    adaptive.activate(_model(0.2))
    assert fixed.adaptation is None and adaptive.adaptation is not None
    assert _events(fixed, 2500, _slow_shift), "the shift must alarm a fixed detector"
    assert _events(adaptive, 2500, _slow_shift) == []
    state = adaptive.adaptation.state()
    assert state["normalization"]["center_shift_spreads"][0] > 1.5  # 1.5 / 0.7 ≈ 2.1


def test_detector_with_adaptation_still_catches_a_fast_fault_and_does_not_learn_it() -> None:
    settings = AdaptationSettings(normalization=True, rate=0.005, holdoff_windows=20)
    detector = Detector(CHANNELS, realert_windows=50, adaptation=settings)
    detector.activate(_model(0.2))

    def step(i: int) -> tuple[float, float]:
        return (2.0, 0.0) if 1000 <= i < 1400 else (0.0, 0.0)  # a step on one channel

    events = _events(detector, 2000, step)
    assert events and events[0] in range(1000, 1010)
    assert len([e for e in events if 1000 <= e < 1400]) >= 6  # alarms for as long as it lasts
    assert all(e < 1420 for e in events)
    assert detector.adaptation is not None
    state = detector.adaptation.state()
    assert abs(state["normalization"]["center_shift_spreads"][0]) < 0.1  # the step was not learned
