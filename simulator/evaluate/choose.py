"""How the SKAB and NAB settings are chosen: a documented grid, leave one file out, one setting.

``simulator evaluate --select`` runs this. The model of each file is fitted once (int8, the
agent's runtime); every candidate is then run through the agent's detector on every file, and
:func:`~simulator.evaluate.selection.leave_one_file_out` picks the setting. The record it
returns is the report's ``selection`` section: what was searched, the objective, each fold's
choice, the cross-validated (held-out) scores and the setting chosen on all files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from edge_agent.detect.adaptation import AdaptationSettings
from simulator.evaluate.datasets import load_nab, load_skab_file, skab_files
from simulator.evaluate.device import MemoReconstructor
from simulator.evaluate.metrics import NAB_PROFILES, PointwiseCounts, nab_normalised
from simulator.evaluate.nab import NabFileResult, NabSetting, evaluate_series, fit_series_model
from simulator.evaluate.selection import Candidate, leave_one_file_out
from simulator.evaluate.skab import ANOMALY_FREE, SkabSetting, fit_file_models, score_file

__all__ = [
    "NAB_GRID",
    "SKAB_GRID",
    "SKAB_LIMITS",
    "SkabRun",
    "choose_nab",
    "choose_skab",
    "nab_objective",
    "recorded_selection",
    "skab_objective",
]

Progress = Callable[[int, int, str], None]

# SKAB: the center's rate (0: no adaptation) × the model's threshold factor.
SKAB_GRID = {"rate": [0.0, 0.001, 0.003, 0.01], "threshold_factor": [1.5, 2.0, 2.5, 3.0]}
# A setting is acceptable when, on the files it is chosen on, FAR and MAR meet the goal and the
# anomaly-free recording's FAR does too; among acceptable ones the best F1 wins.
SKAB_LIMITS = {"far": 13.0, "mar": 28.0, "anomaly_free_far": 13.0}
# NAB: the adaptive threshold's factor × quantile × rate (the model is fixed).
NAB_GRID = {
    "threshold_factor": [1.2, 1.35, 1.5, 1.75, 2.0],
    "threshold_quantile": [0.95, 0.99, 0.995],
    "threshold_rate": [0.001, 0.003],
}


def _grid(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    points: list[dict[str, float]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def _label(point: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in point.items())


@dataclass(frozen=True)
class SkabRun:
    """One file's pointwise counts under one candidate."""

    counts: PointwiseCounts


def skab_objective(results: list[SkabRun], names: list[str]) -> float:
    """F1 of the labelled files if every limit holds; otherwise below every acceptable one."""
    labelled = [r.counts for r, n in zip(results, names, strict=True) if n != ANOMALY_FREE]
    pooled = sum(labelled, PointwiseCounts(0, 0, 0, 0))
    free = [r.counts for r, n in zip(results, names, strict=True) if n == ANOMALY_FREE]
    free_far = free[0].far if free else 0.0
    excess = (
        max(0.0, pooled.far - SKAB_LIMITS["far"])
        + max(0.0, pooled.mar - SKAB_LIMITS["mar"])
        + max(0.0, free_far - SKAB_LIMITS["anomaly_free_far"])
    )
    return pooled.f1 if excess == 0 else pooled.f1 - 1.0 - excess / 100.0


def choose_skab(
    root: Path,
    base: SkabSetting,
    *,
    subsets: list[str] | None,
    progress: Progress | None,
    grid: dict[str, list[float]] | None = None,
) -> tuple[SkabSetting, dict[str, Any]]:
    """Leave one labelled file out over ``grid`` (default :data:`SKAB_GRID`: ``rate`` and
    ``threshold_factor``); anomaly-free.csv, when there, counts false alarms only."""
    grid = grid or SKAB_GRID
    files = skab_files(root, subsets)
    free_path = root / f"{ANOMALY_FREE}.csv"
    if free_path.exists():
        files = [*files, load_skab_file(free_path, root)]
    points = _grid(grid)
    per_point: list[dict[str, SkabRun]] = [{} for _ in points]
    for i, f in enumerate(files):
        if progress:
            progress(i, len(files), f"select {f.name}")
        models = fit_file_models(f, base.config, reference=False)
        # without adaptation every candidate feeds the model the same windows: run them once
        memo = MemoReconstructor(models.device.runtime)
        for k, point in enumerate(points):
            # the model's threshold is (quantile of its training scores) × factor
            factor = point["threshold_factor"] / base.config.threshold_factor
            scaled = dataclasses.replace(models, threshold=models.threshold * factor)
            adaptation = _adaptation(base.adaptation, point["rate"])
            run = score_file(f, scaled, adaptation, runtime=None if point["rate"] else memo)
            per_point[k][f.name] = SkabRun(run.device)
    if progress:
        progress(len(files), len(files), "select done")
    candidates = [
        Candidate(label=_label(p), setting=p, per_file=per_point[k]) for k, p in enumerate(points)
    ]
    labelled = [f.name for f in files if f.name != ANOMALY_FREE]
    loo = leave_one_file_out(candidates, skab_objective, files=labelled)
    held = loo.held_out()
    cv = sum((held[n].counts for n in labelled), PointwiseCounts(0, 0, 0, 0))
    chosen = loo.chosen.setting
    setting = SkabSetting(
        config=dataclasses.replace(base.config, threshold_factor=chosen["threshold_factor"]),
        adaptation=_adaptation(base.adaptation, chosen["rate"]),
    )
    record = {
        "procedure": "leave one file out over the labelled files (anomaly-free.csv, when "
        "present, is in every fold and counts false alarms only); in each fold the best "
        "setting on the other files is chosen and the held-out file is scored with it; the "
        "setting used is then chosen the same way on all files. Per-file models (first 400 "
        "rows) are fitted once; every candidate runs through the agent's detector, int8.",
        "searched": grid,
        "fixed": {"model": base.config.describe()},
        "objective": f"pooled F1 of the labelled files, among settings with FAR <= "
        f"{SKAB_LIMITS['far']}, MAR <= {SKAB_LIMITS['mar']} and anomaly-free FAR <= "
        f"{SKAB_LIMITS['anomaly_free_far']} (others rank below, by how far they miss)",
        "chosen": chosen,
        "cross_validated": _counts_summary(cv),
        "fold_choices": loo.fold_choices(),
        "candidates": [
            {"setting": c.setting, **_skab_candidate_summary(c, labelled)} for c in candidates
        ],
    }
    return setting, record


def _adaptation(base: AdaptationSettings, rate: float) -> AdaptationSettings:
    if rate <= 0:
        return msgspec.structs.replace(base, normalization=False)
    return msgspec.structs.replace(base, normalization=True, rate=rate)


def _counts_summary(c: PointwiseCounts) -> dict[str, float]:
    return {"f1": round(c.f1, 4), "far": round(c.far, 2), "mar": round(c.mar, 2)}


def _skab_candidate_summary(c: Candidate[SkabRun], labelled: list[str]) -> dict[str, Any]:
    pooled = sum((c.per_file[n].counts for n in labelled), PointwiseCounts(0, 0, 0, 0))
    free = c.per_file.get(ANOMALY_FREE)
    return {
        **_counts_summary(pooled),
        "anomaly_free_far": round(free.counts.far, 2) if free else None,
    }


def nab_objective(results: list[NabFileResult], names: list[str]) -> float:
    return nab_normalised([r.counts["standard"] for r in results])


def choose_nab(
    root: Path,
    base: NabSetting,
    *,
    progress: Progress | None,
    grid: dict[str, list[float]] | None = None,
) -> tuple[NabSetting, dict[str, Any]]:
    """Leave one file out over ``grid`` (default :data:`NAB_GRID`, adaptive-threshold fields),
    by NAB's standard profile."""
    grid = grid or NAB_GRID
    series = load_nab(root)
    points = _grid(grid)
    settings = [
        NabSetting(
            config=base.config,
            adaptation=msgspec.structs.replace(base.adaptation, threshold=True, **p),
            cooldown=base.cooldown,
        )
        for p in points
    ]
    per_point: list[dict[str, NabFileResult]] = [{} for _ in points]
    for i, s in enumerate(series):
        if progress:
            progress(i, len(series), f"select {s.name}")
        model = fit_series_model(s, base.config)
        memo = MemoReconstructor(model.runtime)  # the grid changes nothing before the model
        for k, setting in enumerate(settings):
            per_point[k][s.name] = evaluate_series(
                s, setting, float_reference=False, model=model, runtime=memo
            )
    if progress:
        progress(len(series), len(series), "select done")
    candidates = [
        Candidate(label=_label(p), setting=settings[k], per_file=per_point[k])
        for k, p in enumerate(points)
    ]
    loo = leave_one_file_out(candidates, nab_objective)
    held = loo.held_out()
    cv = {
        p.name: round(nab_normalised([held[s.name].counts[p.name] for s in series]), 2)
        for p in NAB_PROFILES
    }
    chosen = loo.chosen
    record = {
        "procedure": "NAB's rule of one setting for every file, chosen by leave one file out: "
        "in each fold the best setting on the other files (standard profile) is chosen and "
        "the held-out file is scored with it; the setting used is then chosen the same way "
        "on all files. Each file's model (trained on its probationary period) is fitted "
        "once; every candidate runs through the agent's detector, int8.",
        "searched": grid,
        "fixed": {"model": base.config.describe(), "cooldown": base.cooldown},
        "objective": "NAB standard score over the files",
        "chosen": points[candidates.index(chosen)],
        "cross_validated": cv,
        "fold_choices": loo.fold_choices(),
        "candidates": [
            {
                "setting": points[k],
                **{
                    p.name: round(
                        nab_normalised([c.per_file[s.name].counts[p.name] for s in series]), 2
                    )
                    for p in NAB_PROFILES
                },
            }
            for k, c in enumerate(candidates)
        ],
    }
    return chosen.setting, record


# What the last `--select` runs measured (int8, the files in ../shared/data), so that a run with
# the defaults reports how they were chosen even where no selection record is at hand.
RECORDED: dict[str, dict[str, Any]] = {
    "skab": {
        "files": "valve1 (16 labelled files) + anomaly-free.csv (false alarms only)",
        "searched": SKAB_GRID,
        "chosen": {"rate": 0.003, "threshold_factor": 2.0},
        "fold_choices": "the chosen setting in 16 of 16 folds",
        "cross_validated": {"f1": 0.8546, "far": 9.94, "mar": 18.97},
    },
    "nab": {
        "files": "realAWSCloudwatch (17 files, 30 windows)",
        "searched": NAB_GRID,
        "chosen": {"threshold_factor": 1.75, "threshold_quantile": 0.95, "threshold_rate": 0.001},
        "fold_choices": "the chosen setting in 13 of 17 folds; threshold_factor=1.5, "
        "threshold_rate=0.003 in the other 4",
        "cross_validated": {"standard": 67.86, "reward_low_fp": 61.08, "reward_low_fn": 71.9},
    },
}


def recorded_selection(path: Path, setting: Any, dataset: str) -> dict[str, Any]:
    """The ``selection`` of a run with the default settings: how they were chosen, what the
    last selection measured, and its full record when ``path`` holds one for these settings."""
    out: dict[str, Any] = {
        "how": f"the defaults in simulator/evaluate/{dataset}.py, chosen by `simulator evaluate "
        f"--dataset {dataset} --select` (leave one file out over a grid, "
        "simulator/evaluate/choose.py)",
        "recorded": RECORDED.get(dataset),
        "record": None,
    }
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            out["note"] = f"{path}: unreadable ({exc})"
            return out
        if record.get("setting") == _jsonable(setting.describe()):
            out["record"] = record
            out["record_path"] = str(path)
        else:
            out["note"] = f"{path} chose other settings than this run's; not included"
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)

