"""Choosing settings without peeking: leave one file out, and the SKAB objective's limits."""

from __future__ import annotations

import pytest

from simulator.evaluate.choose import SkabRun, skab_objective
from simulator.evaluate.metrics import PointwiseCounts
from simulator.evaluate.selection import Candidate, leave_one_file_out
from simulator.evaluate.skab import ANOMALY_FREE


def _mean(results: list[float], names: list[str]) -> float:
    return sum(results) / len(results)


def test_each_fold_chooses_without_its_held_out_file() -> None:
    # "steady" is good everywhere; "lucky" is best overall only thanks to file c
    steady = Candidate("steady", "s", {"a": 0.8, "b": 0.8, "c": 0.8})
    lucky = Candidate("lucky", "l", {"a": 0.7, "b": 0.7, "c": 1.5})
    loo = leave_one_file_out([steady, lucky], _mean)
    assert loo.chosen is lucky  # (0.7 + 0.7 + 1.5) / 3 = 0.97 > 0.8
    # holding out a or b leaves c in: lucky wins; holding out c, steady wins
    assert loo.fold_choices() == {"a": "lucky", "b": "lucky", "c": "steady"}
    # the held-out estimate scores each file with what was chosen without it
    assert loo.held_out() == {"a": 0.7, "b": 0.7, "c": 0.8}


def test_files_that_are_never_held_out_count_in_every_fold() -> None:
    a = Candidate("a", 1, {"x": 1.0, "y": 1.0, "free": 0.0})
    b = Candidate("b", 2, {"x": 0.9, "y": 0.9, "free": 1.0})
    loo = leave_one_file_out([a, b], _mean, files=["x", "y"])
    assert [name for name, _ in loo.folds] == ["x", "y"]
    assert loo.chosen is b and loo.fold_choices() == {"x": "b", "y": "b"}


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        leave_one_file_out([], _mean)


def _counts(f1_like: tuple[int, int, int, int]) -> SkabRun:
    return SkabRun(PointwiseCounts(*f1_like))


def test_skab_objective_ranks_settings_that_miss_a_limit_below_every_acceptable_one() -> None:
    names = ["v/0", ANOMALY_FREE]
    # acceptable: FAR 5 %, MAR 20 %, anomaly-free FAR 5 %
    ok = [_counts((80, 5, 20, 95)), _counts((0, 5, 0, 95))]
    # better F1 on the labelled file, but anomaly-free.csv has 50 % false alarms
    noisy = [_counts((95, 5, 5, 95)), _counts((0, 50, 0, 50))]
    assert 0 < skab_objective(ok, names) < 1
    assert skab_objective(noisy, names) < 0 < skab_objective(ok, names)
    assert skab_objective(ok, names) == pytest.approx(PointwiseCounts(80, 5, 20, 95).f1)


@pytest.mark.hub
def test_skab_selection_records_the_search_the_folds_and_the_held_out_scores(tmp_path) -> None:
    from simulator.evaluate.choose import choose_skab
    from simulator.evaluate.skab import SkabSetting
    from tests.simulator.test_evaluate_skab import write_skab_file

    data = tmp_path / "skab"
    write_skab_file(data / "pumpA" / "0.csv", 1, (550, 750))
    write_skab_file(data / "pumpA" / "1.csv", 2, (600, 700))
    write_skab_file(data / "anomaly-free" / "anomaly-free.csv", 7, (0, 0), labelled=False)
    base = SkabSetting()
    grid = {"rate": [0.003], "threshold_factor": [2.0, 1e6]}  # 1e6: never alarms
    setting, record = choose_skab(data, base, subsets=None, progress=None, grid=grid)
    assert record["searched"] == grid
    assert set(record["fold_choices"]) == {"pumpA/0", "pumpA/1"}  # anomaly-free never held out
    assert len(record["candidates"]) == 2
    assert record["chosen"]["threshold_factor"] == 2.0  # a detector that never alarms misses
    assert setting.config.threshold_factor == 2.0
    assert setting.adaptation.normalization and setting.adaptation.rate == 0.003
    cv = record["cross_validated"]
    assert cv["f1"] > 0.8 and cv["far"] < 13 and cv["mar"] < 28
