"""The parity gate on real conversions: a faithful int8 model passes, a broken one fails."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cloud_hub.quantize.convert import convert, keras_reconstruct
from cloud_hub.quantize.parity import measure_parity, smoothed_scores
from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.families import get_family
from cloud_hub.training.tf_env import seed_everything
from cloud_hub.training.threshold import quantile_threshold
from shared.manifest import Quantization, ScoreSpec
from shared.scoring import window_scores

pytestmark = pytest.mark.hub

SCORE = ScoreSpec(method="mse", smoothing=3)


@pytest.fixture(scope="module")
def setup():
    """A tiny dense AE, its held-out windows (with a few faults) and a quantile threshold."""
    t = np.arange(1500)
    rng = np.random.default_rng(3)
    signal = np.stack([np.sin(t / 4.0), np.cos(t / 4.0), 0.5 * np.sin(t / 9.0)], axis=1)
    signal = (signal + 0.05 * rng.normal(size=signal.shape)).astype(np.float32)
    signal[1300:1310, 0] += 2.5  # faults in the held-out part, so both decisions occur
    signal[1400:1405, 2] -= 2.5
    view = np.lib.stride_tricks.sliding_window_view(signal, 8, axis=0).transpose(0, 2, 1)
    flat = np.ascontiguousarray(view.reshape(len(view), -1))
    train, held_out = flat[:1100], flat[1100:]
    seed_everything(2)
    spec = TrainingSpec(
        window=8, hidden=16, latent=6, epochs=20, batch_size=32, learning_rate=5e-3, seed=2
    )
    model = get_family("dense_ae").train(
        train, held_out[:100], spec, on_epoch=lambda *a: None, cancel=threading.Event()
    )
    reference = keras_reconstruct(model, held_out)
    normal_scores = smoothed_scores(
        window_scores(train, keras_reconstruct(model, train), SCORE), None, SCORE.smoothing
    )
    threshold = quantile_threshold(normal_scores, 0.999, 1.2).threshold
    float_size = len(convert(model, Quantization.FLOAT32))
    return model, train, held_out, reference, threshold, float_size


@pytest.fixture(scope="module")
def faithful_int8(setup) -> bytes:
    """int8 calibrated on the training windows (converted once: several tests compare with it)."""
    model, train, *_ = setup
    return convert(model, "int8", representative=train)


@pytest.fixture(scope="module")
def broken_int8(setup) -> bytes:
    """int8 calibrated on wrongly scaled data: activations clip on real data."""
    model, train, *_ = setup
    return convert(model, "int8", representative=train * 0.01)


def report_for(setup, tflite: bytes, mode: Quantization, min_agreement: float = 0.99):
    _, _, held_out, reference, threshold, float_size = setup
    return measure_parity(
        tflite,
        held_out,
        reference,
        quantization=mode,
        score=SCORE,
        threshold=threshold,
        float_size=float_size,
        min_agreement=min_agreement,
    )


def test_faithful_int8_conversion_passes_the_gate(setup, faithful_int8) -> None:
    report = report_for(setup, faithful_int8, Quantization.INT8)
    assert report.passed, report.failure_reason()
    assert report.float_anomalies > 0  # the faults are flagged, so agreement is not trivial
    assert report.quantized_anomalies > 0
    assert report.score_correlation is not None and report.score_correlation > 0.9
    assert report.size_bytes < report.float_size_bytes
    assert report.windows == len(setup[2])
    assert report.summary().decision_agreement == report.decision_agreement


def test_float32_conversion_agrees_exactly(setup) -> None:
    model, *_ = setup
    report = report_for(setup, convert(model, "float32"), Quantization.FLOAT32)
    assert report.decision_agreement == 1.0
    assert report.max_score_error < 1e-4


def test_int8_calibrated_on_wrongly_scaled_data_fails_the_gate(
    setup, faithful_int8, broken_int8
) -> None:
    report = report_for(setup, broken_int8, Quantization.INT8)
    assert not report.passed
    reason = report.failure_reason()
    assert reason is not None
    assert "decision_agreement" in reason and "below the minimum 0.9900" in reason
    assert (
        report.mean_score_error
        > 10 * report_for(setup, faithful_int8, Quantization.INT8).mean_score_error
    )


def test_gate_minimum_is_configurable(setup, faithful_int8, broken_int8) -> None:
    _, _, held_out, reference, _, float_size = setup
    assert report_for(setup, broken_int8, Quantization.INT8, min_agreement=0.0).passed
    # A threshold at the median puts half the windows next to the decision boundary, where
    # int8 rounding flips some of them (about 10%: mean score error 0.013 with per-tensor or
    # per-channel weight scales alike): a gate demanding perfect agreement then fails.
    float_scores = smoothed_scores(window_scores(held_out, reference, SCORE), None, 3)
    strict = measure_parity(
        faithful_int8,
        held_out,
        reference,
        quantization=Quantization.INT8,
        score=SCORE,
        threshold=float(np.median(float_scores)),
        float_size=float_size,
        min_agreement=1.0,
    )
    assert 0.8 < strict.decision_agreement < 1.0
    assert "below the minimum 1.0000" in (strict.failure_reason() or "")


def test_smoothing_is_per_segment() -> None:
    scores = np.array([1.0, 1.0, 9.0, 9.0])
    assert smoothed_scores(scores, [2, 2], 2).tolist() == [1.0, 1.0, 9.0, 9.0]
    assert smoothed_scores(scores, None, 2).tolist() == [1.0, 1.0, 5.0, 9.0]
    with pytest.raises(ValueError, match="add up to 3"):
        smoothed_scores(scores, [1, 2], 2)


def test_modes_are_timed_in_turns_and_each_gets_its_own_figure(setup) -> None:
    from cloud_hub.quantize.parity import time_interleaved
    from edge_agent.inference.runtime import TfliteModel

    model, train, held_out, _, _, _ = setup
    int8 = TfliteModel(convert(model, Quantization.INT8, representative=train))
    float32 = TfliteModel(convert(model, Quantization.FLOAT32))
    windows = np.asarray(held_out, dtype=np.float32)
    before = int8.reconstruct(windows[0]).copy()
    us = time_interleaved({"int8": int8, "float32": float32}, windows, rounds=3, size=50)
    assert set(us) == {"int8", "float32"}
    assert all(np.isfinite(v) and v > 0 for v in us.values())
    np.testing.assert_array_equal(int8.reconstruct(windows[0]), before)  # the models still work
