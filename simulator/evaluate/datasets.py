"""Readers for the two benchmark formats: SKAB (``;``-separated, labelled rows) and NAB.

Both accept any folder in the same layout, so new files of the same benchmark run unchanged.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "DatasetError",
    "NabSeries",
    "SkabFile",
    "load_nab",
    "load_skab_file",
    "skab_files",
]

SKAB_LABELS = ("anomaly", "changepoint")


class DatasetError(ValueError):
    """A benchmark file or folder that cannot be read; the message names it."""


@dataclass(frozen=True)
class SkabFile:
    name: str  # e.g. "valve1/3"
    channels: list[str]
    values: npt.NDArray[np.float64]  # rows × channels
    labels: npt.NDArray[np.int8] | None  # per row 0/1 (None for anomaly-free files)


@dataclass(frozen=True)
class NabSeries:
    name: str  # e.g. "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"
    timestamps: npt.NDArray[np.float64]  # epoch seconds
    values: npt.NDArray[np.float64]
    windows: list[tuple[float, float]]  # labelled anomaly windows, epoch seconds


def _parse_time(text: str) -> float:
    stamp = datetime.fromisoformat(text.strip())
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def load_skab_file(path: Path, root: Path | None = None) -> SkabFile:
    """One SKAB CSV: ``datetime;<channels…>[;anomaly;changepoint]``."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh, delimiter=";"))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror}") from None
    if len(rows) < 2:
        raise DatasetError(f"{path}: no data rows")
    header = [h.strip() for h in rows[0]]
    if not header or header[0] != "datetime":
        raise DatasetError(f"{path}: first column must be 'datetime', got {header[:1]}")
    channels = [h for h in header[1:] if h not in SKAB_LABELS]
    label_col = header.index("anomaly") if "anomaly" in header else None
    values = np.empty((len(rows) - 1, len(channels)), dtype=np.float64)
    labels = np.zeros(len(rows) - 1, dtype=np.int8) if label_col is not None else None
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}: line {i + 2} has {len(row)} fields, the header has {len(header)}"
            )
        try:
            values[i] = [float(x) for x in row[1 : 1 + len(channels)]]
            if labels is not None and label_col is not None:
                labels[i] = int(float(row[label_col]))
        except ValueError as exc:
            raise DatasetError(f"{path}: line {i + 2}: {exc}") from None
    if not np.isfinite(values).all():
        raise DatasetError(f"{path}: non-finite readings")
    if labels is not None and not np.isin(labels, (0, 1)).all():
        raise DatasetError(f"{path}: 'anomaly' must be 0 or 1")
    name = path.with_suffix("").as_posix()
    if root is not None:
        name = path.relative_to(root).with_suffix("").as_posix()
    return SkabFile(name=name, channels=channels, values=values, labels=labels)


def skab_files(root: Path, subsets: list[str] | None = None) -> list[SkabFile]:
    """Labelled SKAB files under ``root`` (every folder but anomaly-free/, or ``subsets``)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    folders = (
        [root / s for s in subsets]
        if subsets
        else sorted(p for p in root.iterdir() if p.is_dir() and p.name != "anomaly-free")
    )
    paths: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise DatasetError(f"{folder}: not a folder")
        paths += sorted(folder.glob("*.csv"), key=_natural)
    if not paths:
        raise DatasetError(f"{root}: no SKAB .csv files found")
    files = [load_skab_file(p, root) for p in paths]
    unlabelled = [f.name for f in files if f.labels is None]
    if unlabelled:
        raise DatasetError(f"files without an 'anomaly' column: {', '.join(unlabelled)}")
    return files


def load_nab(root: Path) -> list[NabSeries]:
    """Every series listed in ``windows_*.json`` under ``root`` (files relative to ``root``)."""
    labels = sorted(root.glob("windows*.json"))
    if not labels:
        raise DatasetError(f"{root}: no windows_*.json label file")
    series: list[NabSeries] = []
    for label_file in labels:
        try:
            table = json.loads(label_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{label_file}: {exc}") from None
        for name, windows in sorted(table.items()):
            path = root / name
            if not path.exists():
                raise DatasetError(f"{label_file}: lists {name}, which is not in {root}")
            series.append(_load_nab_csv(path, name, windows))
    return series


def _load_nab_csv(path: Path, name: str, windows: list[list[str]]) -> NabSeries:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [h.strip() for h in rows[0][:2]] != ["timestamp", "value"]:
        raise DatasetError(f"{path}: header must be 'timestamp,value'")
    try:
        ts = np.array([_parse_time(r[0]) for r in rows[1:]], dtype=np.float64)
        values = np.array([float(r[1]) for r in rows[1:]], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise DatasetError(f"{path}: {exc}") from None
    try:
        spans = [(_parse_time(a), _parse_time(b)) for a, b in windows]
    except ValueError as exc:
        raise DatasetError(f"{name}: bad window: {exc}") from None
    return NabSeries(name=name, timestamps=ts, values=values, windows=spans)


def _natural(path: Path) -> tuple[int, str]:
    stem = path.stem
    return (int(stem), "") if stem.isdigit() else (1 << 30, stem)
