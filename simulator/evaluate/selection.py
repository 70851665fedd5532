"""Choosing settings without peeking at the rows that score them: leave one file out.

A grid of candidate settings is run on every file; each candidate keeps its per-file results.
For each file in turn, the candidate that scores best on all the *other* files is chosen and
the held-out file is scored with it: pooling those held-out results estimates how the selection
procedure does on files it never saw. The setting finally used is the one that scores best on
all files (the same procedure, with nothing held out). Everything is recorded for the report's
``selection`` section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Candidate", "LeaveOneOut", "leave_one_file_out"]

R = TypeVar("R")  # one file's result under one candidate


@dataclass(frozen=True)
class Candidate(Generic[R]):
    label: str  # a short, unique description of the setting
    setting: Any
    per_file: dict[str, R]


@dataclass(frozen=True)
class LeaveOneOut(Generic[R]):
    chosen: Candidate[R]  # best on all files
    folds: list[tuple[str, Candidate[R]]]  # (held-out file, candidate chosen without it)

    def held_out(self) -> dict[str, R]:
        """Each file's result under the candidate chosen without it."""
        return {name: candidate.per_file[name] for name, candidate in self.folds}

    def fold_choices(self) -> dict[str, str]:
        return {name: candidate.label for name, candidate in self.folds}


def leave_one_file_out(
    candidates: Sequence[Candidate[R]],
    objective: Callable[[list[R], list[str]], float],
    files: Sequence[str] | None = None,
) -> LeaveOneOut[R]:
    """Choose among ``candidates`` by ``objective(results, file names)`` (higher is better).

    ``files`` are the files that are held out in turn (default: all of the first candidate's);
    a candidate's results on other files (e.g. one with no labelled anomaly that only counts
    false alarms) are part of every fold's objective but never held out.
    """
    if not candidates:
        raise ValueError("no candidate settings to choose from")
    names = list(files if files is not None else candidates[0].per_file)
    everything = list(candidates[0].per_file)

    def best(excluded: str | None) -> Candidate[R]:
        def value(c: Candidate[R]) -> float:
            kept = [n for n in everything if n != excluded]
            return objective([c.per_file[n] for n in kept], kept)

        return max(candidates, key=value)  # the first of equals: grids list safer values first

    return LeaveOneOut(chosen=best(None), folds=[(name, best(name)) for name in names])
