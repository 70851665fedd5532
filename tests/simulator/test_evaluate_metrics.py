"""SKAB pointwise metrics and the NAB score, on hand-made detections."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.evaluate.metrics import (
    NAB_PROFILES,
    PointwiseCounts,
    nab_file_score,
    nab_normalised,
    pointwise_counts,
    scaled_sigmoid,
)
from simulator.evaluate.nab import detections_from_flags

STANDARD = NAB_PROFILES[0]


def test_pointwise_f1_far_mar() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    predicted = np.array([0, 1, 0, 0, 1, 1, 1, 0], dtype=bool)
    counts = pointwise_counts(predicted, labels)
    assert counts == PointwiseCounts(tp=3, fp=1, fn=1, tn=3)
    assert counts.f1 == pytest.approx(0.75)
    assert counts.far == pytest.approx(25.0)
    assert counts.mar == pytest.approx(25.0)


def test_flagging_everything_gives_the_trap_f1_with_full_far() -> None:
    labels = np.r_[np.zeros(46), np.ones(54)].astype(int)
    counts = pointwise_counts(np.ones(100, dtype=bool), labels)
    assert counts.f1 == pytest.approx(2 * 54 / (2 * 54 + 46))
    assert counts.far == 100.0 and counts.mar == 0.0


def test_pooled_counts_add_up() -> None:
    a = PointwiseCounts(1, 2, 3, 4)
    assert a + a == PointwiseCounts(2, 4, 6, 8)


def test_scaled_sigmoid_rewards_early_detection() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.9866, abs=1e-4)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(-1.0) > scaled_sigmoid(-0.5) > scaled_sigmoid(-0.1) > 0
    assert -1 < scaled_sigmoid(0.5) < 0
    assert scaled_sigmoid(5.0) == -1.0


def _series() -> tuple[np.ndarray, list[tuple[float, float]]]:
    ts = np.arange(1000, dtype=float) * 300.0
    return ts, [(ts[400], ts[499]), (ts[700], ts[799])]


def test_nab_null_detector_scores_zero_and_perfect_scores_hundred() -> None:
    ts, windows = _series()
    null = nab_file_score(ts, np.zeros(1000, dtype=bool), windows, STANDARD)
    perfect_flags = np.zeros(1000, dtype=bool)
    perfect_flags[[400, 700]] = True
    perfect = nab_file_score(ts, perfect_flags, windows, STANDARD)
    assert nab_normalised([null]) == pytest.approx(0.0)
    assert nab_normalised([perfect]) == pytest.approx(100.0)
    assert (perfect.tp, perfect.fp, perfect.fn) == (2, 0, 0)


def test_nab_counts_only_the_earliest_detection_in_a_window() -> None:
    ts, windows = _series()
    flags = np.zeros(1000, dtype=bool)
    flags[[450, 460, 470]] = True
    result = nab_file_score(ts, flags, windows, STANDARD)
    assert (result.tp, result.fp, result.fn) == (1, 0, 1)
    late = np.zeros(1000, dtype=bool)
    late[490] = True
    assert nab_file_score(ts, late, windows, STANDARD).raw < result.raw


def test_nab_false_positives_cost_more_in_the_low_fp_profile() -> None:
    ts, windows = _series()
    flags = np.zeros(1000, dtype=bool)
    flags[[400, 700, 300, 600]] = True  # two hits, two false positives
    by_profile = {p.name: nab_file_score(ts, flags, windows, p) for p in NAB_PROFILES}
    assert by_profile["standard"].fp == 2
    assert nab_normalised([by_profile["reward_low_fp"]]) < nab_normalised([by_profile["standard"]])
    # a false positive right after a window costs less than one long after it
    near, far_ = np.zeros(1000, dtype=bool), np.zeros(1000, dtype=bool)
    near[[400, 505]] = True
    far_[[400, 650]] = True
    assert (
        nab_file_score(ts, near, windows, STANDARD).raw
        > nab_file_score(ts, far_, windows, STANDARD).raw
    )


def test_nab_ignores_detections_in_the_probationary_period() -> None:
    ts, windows = _series()
    flags = np.zeros(1000, dtype=bool)
    flags[[10, 100]] = True  # inside the first 15%
    assert nab_file_score(ts, flags, windows, STANDARD).fp == 0


def test_missing_windows_cost_double_in_the_low_fn_profile() -> None:
    ts, windows = _series()
    none = np.zeros(1000, dtype=bool)
    low_fn = nab_file_score(ts, none, windows, NAB_PROFILES[2])
    assert low_fn.raw == pytest.approx(-4.0)


def test_detections_are_episode_onsets_with_a_cooldown() -> None:
    flags = np.array([0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=bool)
    assert np.flatnonzero(detections_from_flags(flags, cooldown=0)).tolist() == [1, 5, 11]
    assert np.flatnonzero(detections_from_flags(flags, cooldown=5)).tolist() == [1, 11]
