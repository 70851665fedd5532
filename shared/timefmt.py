"""Times as people read them in logs and status output: ISO 8601 in UTC, not raw epochs."""

from __future__ import annotations

import time

__all__ = ["iso_time"]


def iso_time(epoch: float) -> str:
    """``2026-12-02T06:21:17.443Z`` for epoch seconds."""
    whole = int(epoch)
    millis = int(round((epoch - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"
