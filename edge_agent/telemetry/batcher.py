"""Collects readings into telemetry batches and writes each batch to the outbox, in JSON or
MessagePack (``[telemetry] encoding``, :mod:`shared.packed`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_agent.sources.base import Reading
from edge_agent.telemetry.outbox import Outbox, Stream
from shared.messages import TelemetryBatch
from shared.packed import ENCODINGS, encode_telemetry

__all__ = ["TelemetryBatcher"]


class TelemetryBatcher:
    """A batch is written once it holds ``max_readings`` or its first reading is ``max_age_s``
    old."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        device_id: str,
        channels: list[str],
        topic: str,
        max_readings: int = 100,
        max_age_s: float = 1.0,
        on_stored: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        encoding: str | Callable[[], str] = "json",
    ) -> None:
        if isinstance(encoding, str) and encoding not in ENCODINGS:
            raise ValueError(f"unknown telemetry encoding {encoding!r}; one of "
                             f"{', '.join(ENCODINGS)}")
        self.outbox = outbox
        self.device_id = device_id
        self.channels = list(channels)
        self.topic = topic
        self.max_readings = max_readings
        self.max_age_s = max_age_s
        self.encoding = encoding
        self.batches = 0
        self.readings = 0
        self._on_stored = on_stored
        self._clock = clock
        self._ts: list[float] = []
        self._values: list[list[float]] = []
        self._opened_at = 0.0

    def add(self, reading: Reading) -> None:
        if not self._ts:
            self._opened_at = self._clock()
        self._ts.append(reading.ts)
        self._values.append(list(reading.values))
        if len(self._ts) >= self.max_readings:
            self.flush()

    def flush_if_due(self) -> None:
        if self._ts and self._clock() - self._opened_at >= self.max_age_s:
            self.flush()

    def pending(self) -> int:
        return len(self._ts)

    def flush(self) -> int:
        """Write the open batch to the outbox; returns how many readings it held."""
        if not self._ts:
            return 0
        ts, values = self._ts, self._values
        self._ts, self._values = [], []
        encoding = self.encoding if isinstance(self.encoding, str) else self.encoding()

        def build(seq: int) -> bytes:
            return encode_telemetry(TelemetryBatch(
                device_id=self.device_id, epoch=self.outbox.epoch, seq=seq,
                channels=self.channels, ts=ts, values=values,
            ), encoding)

        self.outbox.add(device_id=self.device_id, stream=Stream.TELEMETRY, topic=self.topic,
                        build=build, readings=len(ts))
        self.batches += 1
        self.readings += len(ts)
        if self._on_stored is not None:
            self._on_stored()
        return len(ts)
