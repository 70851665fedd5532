"""Turn time-ordered readings into normalised training and validation windows.

Each segment (one contiguous run, usually one device) is split in time: its first part trains,
its tail validates, so validation always lies after what the model saw. Windows never cross a
segment boundary or the train/validation cut. Validation windows are taken with the stride the
agent scores with, contiguous per segment, so smoothing sees the same sequence the agent sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.errors import TrainingError
from shared.manifest import Normalization
from shared.scoring import fit_normalization, normalize, sliding_windows

__all__ = ["MIN_TRAIN_WINDOWS", "MIN_VALIDATION_WINDOWS", "Dataset", "prepare_dataset"]

MIN_TRAIN_WINDOWS = 32
MIN_VALIDATION_WINDOWS = 16

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Dataset:
    """Normalised windows, shape (n, window, channels)."""

    normalization: Normalization
    train: FloatArray
    validation: FloatArray
    validation_lengths: list[int]  # validation windows per segment, in order
    validation_labels: npt.NDArray[np.int8] | None  # 1 if any reading in the window is labelled
    training_rows: int
    total_train_windows: int  # before subsampling to spec.max_train_windows


def prepare_dataset(
    readings: npt.ArrayLike,
    channels: list[str],
    spec: TrainingSpec,
    *,
    segments: list[int] | None = None,
    labels: npt.ArrayLike | None = None,
) -> Dataset:
    """Validate everything and cut the windows; raises :class:`TrainingError` naming the problem."""
    data = _check_readings(readings, channels)
    rows = data.shape[0]
    lengths = _check_segments(segments, rows)
    row_labels = _check_labels(labels, rows)

    train_parts: list[tuple[int, int]] = []
    val_parts: list[tuple[int, int]] = []
    start = 0
    for length in lengths:
        cut = start + int(round(length * (1.0 - spec.validation_fraction)))
        train_parts.append((start, cut))
        val_parts.append((cut, start + length))
        start += length

    train_rows = np.concatenate([np.arange(a, b) for a, b in train_parts])
    if row_labels is not None:
        train_rows = train_rows[row_labels[train_rows] == 0]
    if len(train_rows) < 2:
        raise TrainingError(
            f"too few readings: {rows} rows leave {len(train_rows)} normal training rows"
        )
    norm = fit_normalization(data[train_rows], spec.normalization)
    scaled = normalize(data, norm)

    train_windows: list[FloatArray] = []
    for a, b in train_parts:
        w = sliding_windows(scaled[a:b], spec.window, spec.train_stride)
        if row_labels is not None and len(w):
            clean = _window_labels(row_labels[a:b], spec.window, spec.train_stride) == 0
            w = w[clean]
        train_windows.append(w)
    train = np.concatenate(train_windows)

    val_windows: list[FloatArray] = []
    val_labels: list[npt.NDArray[np.int8]] = []
    val_lengths: list[int] = []
    for a, b in val_parts:
        w = sliding_windows(scaled[a:b], spec.window, spec.score_stride)
        val_windows.append(w)
        val_lengths.append(len(w))
        if row_labels is not None:
            val_labels.append(_window_labels(row_labels[a:b], spec.window, spec.score_stride))
    validation = np.concatenate(val_windows)

    if len(train) < MIN_TRAIN_WINDOWS or len(validation) < MIN_VALIDATION_WINDOWS:
        raise TrainingError(
            f"too few readings: {rows} rows in {len(lengths)} segment(s) give {len(train)} "
            f"training and {len(validation)} validation windows of {spec.window} readings; "
            f"need at least {MIN_TRAIN_WINDOWS} and {MIN_VALIDATION_WINDOWS}"
        )
    total = len(train)
    if total > spec.max_train_windows:
        pick = np.linspace(0, total - 1, spec.max_train_windows).round().astype(np.int64)
        train = train[pick]
    return Dataset(
        normalization=norm,
        train=np.ascontiguousarray(train),
        validation=np.ascontiguousarray(validation),
        validation_lengths=val_lengths,
        validation_labels=np.concatenate(val_labels) if row_labels is not None else None,
        training_rows=int(len(train_rows)),
        total_train_windows=total,
    )


def _check_readings(readings: npt.ArrayLike, channels: list[str]) -> npt.NDArray[np.float64]:
    if not channels or any(not isinstance(c, str) or not c for c in channels):
        raise TrainingError(f"channels must be a non-empty list of names, got {channels!r}")
    if len(set(channels)) != len(channels):
        raise TrainingError(f"channel names must be unique, got {channels!r}")
    try:
        data = np.asarray(readings, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"readings are not a numeric rows × channels array: {exc}") from None
    if data.ndim != 2:
        raise TrainingError(f"readings must be rows × channels, got shape {data.shape}")
    if data.shape[1] != len(channels):
        raise TrainingError(
            f"readings have {data.shape[1]} channels but {len(channels)} channel names were "
            f"given ({', '.join(channels)})"
        )
    bad = ~np.isfinite(data)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise TrainingError(
            f"readings contain {int(bad.sum())} NaN/infinite values; first at row {row}, "
            f"channel {channels[col]!r} ({data[row, col]})"
        )
    return data


def _check_segments(segments: list[int] | None, rows: int) -> list[int]:
    if segments is None:
        return [rows]
    lengths = list(segments)
    if not lengths or any(not isinstance(n, int | np.integer) or n <= 0 for n in lengths):
        raise TrainingError(f"segments must be positive row counts, got {lengths!r}")
    if sum(lengths) != rows:
        raise TrainingError(f"segments add up to {sum(lengths)} rows but readings have {rows}")
    return [int(n) for n in lengths]


def _check_labels(labels: npt.ArrayLike | None, rows: int) -> npt.NDArray[np.int8] | None:
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.shape != (rows,):
        raise TrainingError(f"labels must have one value per reading ({rows}), got {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        odd = arr[~np.isin(arr, (0, 1))][0]
        raise TrainingError(f"labels must be 0 or 1, found {odd!r}")
    return arr.astype(np.int8)


def _window_labels(
    row_labels: npt.NDArray[np.int8], window: int, stride: int
) -> npt.NDArray[np.int8]:
    """1 for each window (as cut by sliding_windows) holding any labelled reading."""
    if len(row_labels) < window:
        return np.empty(0, dtype=np.int8)
    view = np.lib.stride_tricks.sliding_window_view(row_labels, window)[::stride]
    result: npt.NDArray[np.int8] = view.max(axis=1).astype(np.int8)
    return result
