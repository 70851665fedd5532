"""The one reader of sensor CSV files: the agent's CSV source and the hub's training uploads.

It reads the project's SKAB files (``;`` separator, a ``datetime`` column, ``anomaly`` and
``changepoint`` label columns) as well as plain comma CSV with a ``ts`` column. The header
decides the layout: the separator (``;`` when the header line has one, else ``,``), the time
column (the first of datetime/timestamp/time/ts present, any case) and the channels (every other
column but the labels, unless chosen). Standard library only: the agent imports it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

__all__ = [
    "LABEL_COLUMNS",
    "TIME_COLUMNS",
    "CsvFormatError",
    "CsvLayout",
    "parse_time",
    "read_layout",
    "read_table",
]

LABEL_COLUMNS = ("anomaly", "changepoint", "label")
TIME_COLUMNS = ("datetime", "timestamp", "time", "ts")


class CsvFormatError(ValueError):
    """The CSV cannot give the requested layout; the text names the line or column. ``part``
    says what was wrong: ``"header"``, ``"columns"``, ``"time_column"`` or ``"rows"``."""

    def __init__(self, message: str, part: str = "rows") -> None:
        super().__init__(message)
        self.part = part


def parse_time(text: str) -> float:
    """Epoch seconds from a number or an ISO 8601 time (UTC when it has no offset)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch seconds nor an ISO time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


@dataclass(frozen=True)
class CsvLayout:
    """Where the time and the chosen channels are in each row of one file."""

    separator: str
    header: tuple[str, ...]
    channels: tuple[str, ...]
    time_column: str | None

    def row(
        self, fields: Sequence[str], *, with_time: bool = True
    ) -> tuple[float | None, tuple[float, ...]]:
        """(time or None, channel values) of one row; ValueError naming the column."""
        if len(fields) != len(self.header):
            raise ValueError(f"{len(fields)} fields, the header has {len(self.header)}")
        values = []
        for name in self.channels:
            cell = fields[self._index[name]].strip()
            try:
                number = float(cell)
            except ValueError:
                raise ValueError(f"column {name!r}: {cell!r} is not a number") from None
            if not math.isfinite(number):
                raise ValueError(f"column {name!r}: {cell!r} is not finite")
            values.append(number)
        ts = None
        if with_time and self.time_column is not None:
            try:
                ts = parse_time(fields[self._index[self.time_column]])
            except ValueError as exc:
                raise ValueError(f"column {self.time_column!r}: {exc}") from None
        return ts, tuple(values)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.header)}


def read_layout(
    header_line: str,
    *,
    separator: str | None = None,
    columns: Sequence[str] | None = None,
    time_column: str | None = None,
) -> CsvLayout:
    """The layout a header line gives; :class:`CsvFormatError` when a chosen column is missing."""
    if not header_line.strip():
        raise CsvFormatError("the CSV is empty; expected a header line naming the channels",
                             "header")
    sep = separator or (";" if ";" in header_line else ",")
    header = tuple(h.strip() for h in next(csv.reader([header_line], delimiter=sep)))
    lowered = {h.lower(): h for h in header}
    if time_column is None:
        time_column = next((lowered[c] for c in TIME_COLUMNS if c in lowered), None)
    elif time_column not in header:
        raise CsvFormatError(f"time column {time_column!r} is not in the header {list(header)}",
                             "time_column")
    if columns is None:
        columns = [h for h in header
                   if h != time_column and h.lower() not in LABEL_COLUMNS and h]
    chosen = [c.strip() for c in columns]
    missing = [c for c in chosen if c not in header]
    if missing:
        raise CsvFormatError(f"column(s) {missing} not in the header {list(header)}", "columns")
    if not chosen or len(set(chosen)) != len(chosen):
        raise CsvFormatError(f"channels {chosen} must be distinct and at least one", "columns")
    return CsvLayout(separator=sep, header=header, channels=tuple(chosen),
                     time_column=time_column)


def read_table(
    text: str, *, columns: Sequence[str] | None = None
) -> tuple[CsvLayout, list[tuple[float, ...]]]:
    """Every row of a whole CSV text, strictly: the first bad line raises
    :class:`CsvFormatError` naming the line and the column (for training uploads)."""
    lines = text.splitlines()
    layout = read_layout(lines[0] if lines else "", columns=columns)
    reader = csv.reader(lines[1:], delimiter=layout.separator)
    rows: list[tuple[float, ...]] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return layout, rows
        except csv.Error as exc:
            raise CsvFormatError(f"line {reader.line_num + 1}: {exc}") from None
        if not fields or not any(cell.strip() for cell in fields):
            continue
        try:
            rows.append(layout.row(fields, with_time=False)[1])
        except ValueError as exc:
            where = ", " if str(exc).startswith("column") else ": "
            raise CsvFormatError(f"line {reader.line_num + 1}{where}{exc}") from None
