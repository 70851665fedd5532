"""Training data uploaded as CSV: parsed and checked at the boundary, stored as .npy."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared.sensor_csv import CsvFormatError, read_table

__all__ = ["CsvError", "load_upload", "parse_training_csv", "save_upload"]


class CsvError(ValueError):
    """The CSV cannot be a training set; the message names the line and column."""


def parse_training_csv(
    text: str, channels: list[str] | None = None
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Rows × channels from a CSV with a header, read as the agent's CSV source reads it
    (:mod:`shared.sensor_csv`): SKAB's ``;`` files too; the time column and the label columns
    (anomaly, changepoint) are left out unless ``channels`` names them."""
    try:
        layout, rows = read_table(text, columns=channels)
    except CsvFormatError as exc:
        raise CsvError(str(exc)) from None
    if len(rows) < 2:
        raise CsvError(f"the CSV has {len(rows)} data line(s); training needs many more")
    return np.asarray(rows, dtype=np.float32), list(layout.channels)


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
