"""SKAB pointwise metrics and the NAB score, on hand-made detections."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator.evaluate.metrics import (
    NAB_PROFILES,
    PointwiseCounts,
    nab_file_score,
    nab_normalised,
    pointwise_counts,
    probationary_rows,
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
    assert scaled_sigmoid(3.0) == -1.0  # NAB: from 3 on, the full false-positive cost


def _series() -> tuple[np.ndarray, list[tuple[float, float]]]:
    ts = np.arange(1000, dtype=float) * 300.0
    return ts, [(ts[400], ts[499]), (ts[700], ts[799])]


@pytest.mark.parametrize("profile", NAB_PROFILES, ids=lambda p: p.name)
def test_nab_null_detector_scores_zero_and_perfect_scores_hundred(profile) -> None:
    ts, windows = _series()
    null = nab_file_score(ts, np.zeros(1000, dtype=bool), windows, profile)
    perfect_flags = np.zeros(1000, dtype=bool)
    perfect_flags[[400, 700]] = True  # the first row of each window
    perfect = nab_file_score(ts, perfect_flags, windows, profile)
    assert nab_normalised([null]) == pytest.approx(0.0)
    assert nab_normalised([perfect]) == pytest.approx(100.0)
    assert (perfect.tp, perfect.fp, perfect.fn) == (2, 0, 0)
    assert perfect.raw == pytest.approx(2 * profile.tp)  # full credit 1.0 at a window's start


def _sigma(y: float) -> float:
    """NAB's scaled sigmoid, written out again so the test does not trust the code under test."""
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def test_nab_raw_scores_are_those_of_nabs_rules_computed_by_hand() -> None:
    # 100 rows, 5 minutes apart. Probationary period: min(floor(0.15 × 100), 750) = 15 rows.
    # Window A: rows 30..39 (W = 10). Window B: rows 60..64 (W = 5).
    ts = np.arange(100, dtype=float) * 300.0
    windows = [(ts[30], ts[39]), (ts[60], ts[64])]
    flags = np.zeros(100, dtype=bool)
    flags[[10, 20, 33, 36, 45, 90]] = True
    # row 10: probationary, not scored
    # row 20: before any window: the full false-positive cost, -A_FP
    # row 33: in A, position -(39 - 33 + 1)/10 = -0.7, credit A_TP · σ(-0.7)/σ(-1)
    # row 36: in A, later than row 33 (position -0.4): only the best (earliest) one counts
    # row 45: after A, position |45 - 39|/(10 - 1) = 2/3, costs A_FP · σ(2/3) (σ < 0)
    # row 90: after B, position |90 - 64|/(5 - 1) = 6.5 ≥ 3, the full cost -A_FP
    # window B has no detection: -A_FN
    tp_credit = _sigma(-0.7) / _sigma(-1.0)  # 0.941376 / 0.986614 = 0.954147
    near_fp = _sigma(2.0 / 3.0)  # -0.931110
    expected = {
        "standard": 1.0 * tp_credit - 0.11 + 0.11 * near_fp - 0.11 - 1.0,  # -0.368274
        "reward_low_fp": 1.0 * tp_credit - 0.22 + 0.22 * near_fp - 0.22 - 1.0,  # -0.690697
        "reward_low_fn": 1.0 * tp_credit - 0.11 + 0.11 * near_fp - 0.11 - 2.0,  # -1.368274
    }
    assert tp_credit == pytest.approx(0.954147, abs=1e-6)
    assert near_fp == pytest.approx(-0.931110, abs=1e-6)
    for profile in NAB_PROFILES:
        result = nab_file_score(ts, flags, windows, profile)
        assert (result.tp, result.fp, result.fn) == (1, 3, 1)
        assert result.raw == pytest.approx(expected[profile.name], abs=1e-9), profile.name
    assert expected["standard"] == pytest.approx(-0.368274, abs=1e-6)


def test_nab_credits_a_detection_by_its_row_in_the_window() -> None:
    # window rows 400..499 (W = 100): the first row earns 1.0, the last -(1)/100 → σ(-0.01)
    ts, windows = _series()
    for row, position in ((400, -1.0), (450, -0.5), (499, -0.01)):
        flags = np.zeros(1000, dtype=bool)
        flags[[row, 700]] = True
        result = nab_file_score(ts, flags, windows, STANDARD)
        assert result.raw == pytest.approx(_sigma(position) / _sigma(-1.0) + 1.0)


def test_nab_probationary_period_is_fifteen_percent_up_to_750_rows() -> None:
    assert probationary_rows(1000) == 150
    assert probationary_rows(4032) == 604  # floor(604.8)
    assert probationary_rows(5000) == 750
    assert probationary_rows(22695) == 750  # a long file is scored from row 750
    # a detection at row 800 of a 10,000-row file is scored (15% would have been row 1,500)
    ts = np.arange(10_000, dtype=float) * 300.0
    flags = np.zeros(10_000, dtype=bool)
    flags[800] = True
    windows = [(ts[800], ts[899])]
    result = nab_file_score(ts, flags, windows, STANDARD)
    assert (result.tp, result.fn) == (1, 0)
    assert nab_normalised([result]) == pytest.approx(100.0)


def test_nab_window_inside_the_probationary_period_is_not_scored() -> None:
    ts, _ = _series()
    windows = [(ts[50], ts[99]), (ts[400], ts[499])]  # the first ends before row 150
    result = nab_file_score(ts, np.zeros(1000, dtype=bool), windows, STANDARD)
    assert (result.tp, result.fn) == (0, 1)
    assert result.null == -1.0  # only the scored window counts for the null detector
    assert result.perfect == 2.0  # NAB's runner: A_TP × every labelled window


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
