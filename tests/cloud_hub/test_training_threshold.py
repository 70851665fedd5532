"""Threshold strategies: validation quantile and F1-optimal on labelled windows."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.errors import TrainingError
from cloud_hub.training.pipeline import run_training, score_spec_for
from cloud_hub.training.threshold import f1_optimal_threshold, is_anomaly, quantile_threshold


def test_quantile_threshold_flags_the_expected_share_of_normal_scores() -> None:
    scores = np.arange(1000, dtype=float)
    choice = quantile_threshold(scores, 0.99)
    assert is_anomaly(scores, choice.threshold).sum() == 10
    assert "quantile 0.99 of 1,000" in choice.method
    assert quantile_threshold(scores, 0.99, factor=2.0).threshold == pytest.approx(
        2 * choice.threshold
    )


def test_f1_threshold_separates_separable_classes_perfectly() -> None:
    rng = np.random.default_rng(0)
    normal, anomalous = rng.uniform(0, 1, 500), rng.uniform(2, 3, 20)
    scores = np.concatenate([normal, anomalous])
    labels = np.r_[np.zeros(500), np.ones(20)].astype(int)
    choice = f1_optimal_threshold(scores, labels)
    assert choice.f1 == pytest.approx(1.0)
    assert normal.max() < choice.threshold < anomalous.min()
    assert np.array_equal(is_anomaly(scores, choice.threshold), labels.astype(bool))


def test_f1_threshold_trades_precision_for_recall_on_overlap() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    choice = f1_optimal_threshold(scores, labels)
    flags = is_anomaly(scores, choice.threshold)
    assert flags.tolist() == [False, False, False, True, True, True, True, True]
    assert choice.f1 == pytest.approx(2 * 4 / (5 + 4))


def test_f1_threshold_needs_both_classes() -> None:
    with pytest.raises(TrainingError, match="both classes"):
        f1_optimal_threshold(np.ones(10), np.zeros(10, dtype=int))


@pytest.mark.hub
def test_pipeline_uses_labels_for_an_f1_optimal_threshold() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(800)
    readings = np.stack([np.sin(t / 6.0), np.cos(t / 6.0)], axis=1) + 0.05 * rng.normal(
        size=(800, 2)
    )
    labels = np.zeros(800, dtype=int)
    for start in (660, 720, 770):  # faults in the validation tail
        readings[start : start + 6, 0] += 3.0
        labels[start : start + 6] = 1
    spec = TrainingSpec(
        window=8, hidden=8, latent=3, epochs=3, threshold_method="f1", compare_modes=False
    )
    artifact = run_training(readings, ["x", "y"], spec, labels=labels)
    assert artifact.threshold_method.startswith("F1-optimal")
    assert artifact.validation["f1"] > 0.5
    assert artifact.validation["anomalous_windows"] > 0


def test_channel_max_scales_each_channel_by_its_mean_held_out_error() -> None:
    rng = np.random.default_rng(5)
    windows = rng.normal(size=(400, 16, 3)).astype(np.float32)
    errors = np.array([0.1, 1.0, 0.02], dtype=np.float32)  # per channel, on every value
    recon = windows + errors
    spec = TrainingSpec(window=16, score_reduce="channel_max")
    scale = score_spec_for(spec, windows, recon, 3).channel_scale
    assert scale == pytest.approx((errors.astype(np.float64) ** 2).tolist(), rel=1e-5)
    assert score_spec_for(TrainingSpec(window=16), windows, recon, 3).channel_scale is None


def test_a_channel_the_model_reconstructs_exactly_gets_a_floor_not_a_zero_scale() -> None:
    windows = np.ones((50, 8, 3), dtype=np.float32)
    recon = windows + np.array([0.5, 0.0, 0.2], dtype=np.float32)
    scale = score_spec_for(TrainingSpec(window=8, score_reduce="channel_max"), windows, recon,
                           3).channel_scale
    assert scale is not None and scale[1] == pytest.approx(0.01 * 0.04)  # 1% of the median
