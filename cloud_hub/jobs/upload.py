"""Training data uploaded as CSV: parsed and checked at the boundary (numpy only: the edge
venv's tests read CSVs through it too). :mod:`cloud_hub.jobs.upload_store` keeps it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shared.sensor_csv import CsvFormatError, read_table

__all__ = ["CsvError", "parse_training_csv"]


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
