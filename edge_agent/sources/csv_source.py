"""Replay a CSV file as a sensor, at its own pace (or faster), SKAB format included.

The file is read by :mod:`shared.sensor_csv`, the reader the hub's training uploads use too.

Options: ``path`` (required); ``separator`` (default: ``;`` if the header has one, else ``,``);
``columns`` (channels to read; default every column but the time and label columns);
``time_column`` (default ``datetime``, ``timestamp``, ``time`` or ``ts`` when present);
``replay_speed`` (1.0 = real time, 10 = ten times faster, 0 = as fast as possible); ``rate_hz``
(pace when the file has no time column); ``loop`` (start again at the end); ``timestamps``
(``now``: stamp readings with the replay time, as a live sensor would; ``file``: keep the
file's times).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from edge_agent.sources.base import (
    BadRowCounter,
    Reading,
    SensorSource,
    SourceError,
    refuse_unknown_options,
)
from shared.sensor_csv import CsvFormatError, read_layout

__all__ = ["CsvSource", "create_source"]

log = logging.getLogger(__name__)

_MAX_PER_READ = 5000
_KNOWN = {"path", "separator", "columns", "time_column", "replay_speed", "rate_hz", "loop",
          "timestamps"}


class CsvSource(SensorSource):
    def __init__(
        self,
        path: Path | str,
        *,
        separator: str | None = None,
        columns: list[str] | None = None,
        time_column: str | None = None,
        replay_speed: float = 1.0,
        rate_hz: float = 1.0,
        loop: bool = False,
        timestamps: str = "now",
    ) -> None:
        self.path = Path(path)
        if replay_speed < 0:
            raise SourceError(f"source.options.replay_speed must be >= 0, got {replay_speed}")
        if rate_hz <= 0:
            raise SourceError(f"source.options.rate_hz must be > 0, got {rate_hz}")
        if timestamps not in ("now", "file"):
            raise SourceError(f"source.options.timestamps must be 'now' or 'file', got "
                              f"{timestamps!r}")
        try:
            with self.path.open(encoding="utf-8", newline="") as fh:
                header_line = fh.readline()
        except OSError as exc:
            raise SourceError(f"source.options.path {str(self.path)!r}: {exc.strerror}") from None
        try:
            self.layout = read_layout(header_line, separator=separator, columns=columns,
                                      time_column=time_column)
        except CsvFormatError as exc:
            option = "path" if exc.part == "header" else exc.part
            raise SourceError(f"source.options.{option}: {self.path.name}: {exc}") from None
        self.separator = self.layout.separator
        self.channels = list(self.layout.channels)
        self.replay_speed = replay_speed
        self.rate_hz = rate_hz
        self.loop = loop
        self.timestamps = timestamps
        self._bad = BadRowCounter(log, f"csv {self.path.name}")
        self._fh: TextIO | None = None
        self._rows: Iterator[list[str]] | None = None
        self._line = 1
        self._pending: tuple[float, Reading] | None = None
        self._start_wall = 0.0
        self._start_file: float | None = None
        self._row_number = 0
        self._done = False

    @property
    def bad_readings(self) -> int:  # type: ignore[override]
        return self._bad.count

    @property
    def exhausted(self) -> bool:
        return self._done

    def _open(self) -> None:
        self._fh = self.path.open(encoding="utf-8", newline="")
        self._fh.readline()
        self._rows = csv.reader(self._fh, delimiter=self.separator)
        self._line = 1
        self._start_wall = time.monotonic()
        self._start_file = None
        self._row_number = 0

    def _next(self) -> tuple[float, Reading] | None:
        """The next good row as (due time on the monotonic clock, reading), or None at the end."""
        while True:
            if self._rows is None:
                self._open()
            assert self._rows is not None
            try:
                row = next(self._rows)
            except StopIteration:
                if self.loop:
                    self.close()
                    continue
                return None
            except csv.Error as exc:
                self._line += 1
                self._bad.skip(f"line {self._line}", str(exc))
                continue
            self._line += 1
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                reading_at, values = self._parse(row)
            except ValueError as exc:
                self._bad.skip(f"line {self._line}", str(exc))
                continue
            return reading_at, values

    def _parse(self, row: list[str]) -> tuple[float, Reading]:
        file_ts, values = self.layout.row(row)
        if file_ts is None:
            file_ts = self._row_number / self.rate_hz
        self._row_number += 1
        if self._start_file is None:
            self._start_file = file_ts
        offset = max(0.0, file_ts - self._start_file)
        due = self._start_wall + (offset / self.replay_speed if self.replay_speed > 0 else 0.0)
        ts = file_ts if self.timestamps == "file" else time.time() + (due - time.monotonic())
        return due, Reading(ts=ts, values=values)

    def read(self, timeout: float) -> list[Reading]:
        deadline = time.monotonic() + timeout
        out: list[Reading] = []
        while len(out) < _MAX_PER_READ:
            if self._pending is None:
                self._pending = None if self._done else self._next()
                if self._pending is None:
                    self._done = True
                    self.close()
                    if not out:
                        time.sleep(max(0.0, min(timeout, 0.05)))
                    return out
            due, reading = self._pending
            now = time.monotonic()
            if due <= now:
                out.append(reading)
                self._pending = None
                continue
            if out or now >= deadline:
                return out
            time.sleep(min(due, deadline) - now)
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._rows = None


def create_source(options: dict[str, Any]) -> CsvSource:
    refuse_unknown_options(options, _KNOWN, "csv")
    if "path" not in options:
        raise SourceError("source.options.path is required for type 'csv'")
    try:
        return CsvSource(**options)
    except TypeError as exc:
        raise SourceError(f"source.options: {exc}") from None
