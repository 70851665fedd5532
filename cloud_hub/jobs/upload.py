"""Training data uploaded as CSV: parsed and checked at the boundary, stored as .npy."""

from __future__ import annotations

import csv
import io
import math
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["CsvError", "load_upload", "parse_training_csv", "save_upload"]

_TIME_COLUMNS = {"ts", "time", "timestamp", "datetime"}


class CsvError(ValueError):
    """The CSV cannot be a training set; the message names the line and column."""


def parse_training_csv(
    text: str, channels: list[str] | None = None
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Rows × channels from a CSV with a header; a time column (ts/time/…) is skipped."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CsvError("the CSV is empty; expected a header line naming the channels") from None
    available = [h for h in header if h.lower() not in _TIME_COLUMNS]
    wanted = channels or available
    missing = [c for c in wanted if c not in header]
    if missing:
        raise CsvError(f"header has no column(s) {missing}; it has {header}")
    if len(set(wanted)) != len(wanted) or not wanted:
        raise CsvError(f"channels {wanted} must be distinct and at least one")
    index = [header.index(c) for c in wanted]
    rows: list[list[float]] = []
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CsvError(f"line {line}: {len(row)} fields, the header has {len(header)}")
        values = []
        for i in index:
            try:
                value = float(row[i])
            except ValueError:
                raise CsvError(
                    f"line {line}, column {header[i]!r}: {row[i]!r} is not a number") from None
            if not math.isfinite(value):
                raise CsvError(f"line {line}, column {header[i]!r}: {row[i]!r} is not finite")
            values.append(value)
        rows.append(values)
    if len(rows) < 2:
        raise CsvError(f"the CSV has {len(rows)} data line(s); training needs many more")
    return np.asarray(rows, dtype=np.float32), list(wanted)


def save_upload(directory: Path, values: npt.NDArray[np.float32]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.npy"
    tmp = directory / f".{name}.tmp"
    with tmp.open("wb") as fh:
        np.save(fh, values)
    tmp.replace(directory / name)
    return name


def load_upload(directory: Path, name: str) -> npt.NDArray[np.float32]:
    if "/" in name or name.startswith("."):
        raise CsvError(f"upload name {name!r} is not valid")
    data: npt.NDArray[np.float32] = np.load(directory / name, allow_pickle=False)
    return data
