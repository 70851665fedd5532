"""Readings as JSON lines on standard input (one object per line; see ``reading_from_json``).

Options: ``channels`` (required, the names in order). A reader thread blocks on stdin so that
``read(timeout)`` never does; end of input makes the source exhausted.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Any, TextIO

from edge_agent.sources.base import (
    BadRowCounter,
    Reading,
    SensorSource,
    channel_list,
    drain,
    reading_from_json,
    refuse_unknown_options,
)

__all__ = ["StdinSource", "create_source"]

log = logging.getLogger(__name__)
_END = object()


class StdinSource(SensorSource):
    def __init__(self, channels: list[str], stream: TextIO | None = None) -> None:
        self.channels = list(channels)
        self._stream = stream if stream is not None else sys.stdin
        self._queue: queue.Queue[object] = queue.Queue(maxsize=10_000)
        self._bad = BadRowCounter(log, "stdin")
        self._done = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="stdin-source", daemon=True)
        self._thread.start()

    @property
    def bad_readings(self) -> int:  # type: ignore[override]
        return self._bad.count

    @property
    def exhausted(self) -> bool:
        return self._done

    def _pump(self) -> None:
        for number, line in enumerate(self._stream, start=1):
            if self._closed.is_set():
                return
            if line.strip():
                self._queue.put((number, line))
        self._queue.put(_END)

    def read(self, timeout: float) -> list[Reading]:
        out: list[Reading] = []
        for item in drain(self._queue, timeout):
            if item is _END:
                self._done = True
                break
            assert isinstance(item, tuple)
            number, line = item
            try:
                out.append(reading_from_json(line, self.channels, time.time()))
            except ValueError as exc:
                self._bad.skip(f"line {number}", str(exc))
        return out

    def close(self) -> None:
        self._closed.set()


def create_source(options: dict[str, Any]) -> StdinSource:
    refuse_unknown_options(options, {"channels"}, "stdin")
    return StdinSource(channel_list(options, "stdin"))
