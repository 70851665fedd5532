"""The small interface every sensor source implements, and the reading it produces."""

from __future__ import annotations

import json
import logging
import math
import queue
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["BadRowCounter", "Reading", "SensorSource", "SourceError", "channel_list", "drain",
           "finite_values", "reading_from_json", "refuse_unknown_options"]

T = TypeVar("T")


class SourceError(ValueError):
    """A source that cannot be built from its options; the text names the option."""


@dataclass(frozen=True)
class Reading:
    """One sample of every channel at ``ts`` (epoch seconds)."""

    ts: float
    values: tuple[float, ...]


class SensorSource(ABC):
    """Produces readings of fixed ``channels``. ``bad_readings`` counts rows it skipped."""

    channels: list[str]
    bad_readings: int = 0

    @abstractmethod
    def read(self, timeout: float) -> list[Reading]:
        """Readings available now, waiting at most ``timeout`` seconds; [] if none."""

    @abstractmethod
    def close(self) -> None:
        """Release files, sockets and threads."""

    @property
    def exhausted(self) -> bool:
        """True when the source will never produce another reading (end of a finite file)."""
        return False


class BadRowCounter:
    """Counts skipped rows; logs each of the first few as one line, then every 1000th."""

    def __init__(self, logger: logging.Logger, where: str, first: int = 10) -> None:
        self.count = 0
        self._log = logger
        self._where = where
        self._first = first

    def skip(self, position: str, reason: str) -> None:
        self.count += 1
        if self.count <= self._first or self.count % 1000 == 0:
            self._log.warning("%s %s skipped: %s (%d bad so far)", self._where, position, reason,
                              self.count)


def finite_values(raw: list[object], channels: list[str]) -> tuple[float, ...]:
    """Floats for ``channels`` from ``raw``, or ValueError naming the channel and value."""
    if len(raw) != len(channels):
        raise ValueError(f"{len(raw)} values for {len(channels)} channels")
    out = []
    for name, value in zip(channels, raw, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"channel {name!r}: {value!r} is not a number")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"channel {name!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"channel {name!r}: {value!r} is not finite")
        out.append(number)
    return tuple(out)


def reading_from_json(text: str | bytes, channels: list[str], now: float) -> Reading:
    """A reading from one JSON object: ``{"ts": 1.7e9, "values": {"a": 1.0}}`` (or a list of
    values in channel order, or the channels as top-level keys). ``ts`` defaults to ``now``."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    raw_ts = obj.get("ts", now)
    if isinstance(raw_ts, bool) or not isinstance(raw_ts, int | float) or not math.isfinite(
        raw_ts
    ) or raw_ts < 0:
        raise ValueError(f"ts: {raw_ts!r} is not epoch seconds")
    values = obj.get("values", obj)
    if isinstance(values, dict):
        missing = [c for c in channels if c not in values]
        if missing:
            raise ValueError(f"missing channel(s) {missing}")
        row = [values[c] for c in channels]
    elif isinstance(values, list):
        row = values
    else:
        raise ValueError(f"values: expected an object or a list, got {type(values).__name__}")
    return Reading(ts=float(raw_ts), values=finite_values(row, channels))


def channel_list(options: dict[str, Any], source_type: str) -> list[str]:
    channels = options.get("channels")
    if (
        not isinstance(channels, list)
        or not channels
        or not all(isinstance(c, str) and c for c in channels)
        or len(set(channels)) != len(channels)
    ):
        raise SourceError(
            f"source.options.channels must be a non-empty list of distinct names for type "
            f"{source_type!r}, got {channels!r}"
        )
    return list(channels)


def refuse_unknown_options(options: dict[str, Any], known: Iterable[str],
                           source_type: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SourceError(f"source.options: unknown key(s) {unknown} for type {source_type!r}; "
                          f"known: {sorted(known)}")


def drain(items: queue.Queue[T], timeout: float) -> list[T]:
    """Wait up to ``timeout`` for one item, then take whatever else is already there."""
    try:
        out = [items.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            out.append(items.get_nowait())
        except queue.Empty:
            return out
