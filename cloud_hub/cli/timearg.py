"""``--since`` / ``--until`` values: epoch seconds, a duration back from now, or an ISO time."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time

__all__ = ["WHEN_HELP", "parse_when"]

WHEN_HELP = "epoch seconds, a duration ago (10m, 2h, 1d, 1h30m) or an ISO time (UTC if no offset)"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhdw])+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_when(text: str, *, now: float | None = None) -> float:
    """Epoch seconds for ``text``; argparse shows the error when it is none of the forms."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    if _DURATION.match(value):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
        return (time.time() if now is None else now) - seconds
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use {WHEN_HELP}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()
