"""The outbox's accounting: how many messages and bytes it holds, its bounds, and its drops.

The totals change in one place (:meth:`Accounting.added`, :meth:`Accounting.removed`), fed by
what the store really inserted or deleted. The bounds apply to everything not yet acknowledged
by the hub: when a new message does not fit, the oldest telemetry goes first, then drift
summaries, anomalies only when nothing else is left, and they expire later; a message the link
holds right now (waiting for its PUBACK) is never dropped. Every drop is counted,
persistently, in the same transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Container, Iterable
from dataclasses import dataclass

from edge_agent.telemetry import store
from edge_agent.telemetry.store import Removed, Stream

__all__ = ["Accounting", "DropStats", "OutboxError"]

log = logging.getLogger(__name__)


class OutboxError(RuntimeError):
    """A message the outbox cannot take (e.g. larger than the whole outbox)."""


@dataclass(frozen=True)
class DropStats:
    telemetry_messages: int = 0
    telemetry_readings: int = 0
    anomalies: int = 0
    drift: int = 0

    @property
    def messages(self) -> int:
        return self.telemetry_messages + self.anomalies + self.drift

    @staticmethod
    def read(db: sqlite3.Connection) -> DropStats:
        values = store.counters(db)
        return DropStats(
            telemetry_messages=values.get("dropped_telemetry_messages", 0),
            telemetry_readings=values.get("dropped_telemetry_readings", 0),
            anomalies=values.get("dropped_anomalies", 0),
            drift=values.get("dropped_drift", 0),
        )


_DROP_ORDER = (Stream.TELEMETRY, Stream.DRIFT, Stream.ANOMALIES)


class Accounting:
    """Totals of one outbox and its drop policy; the caller holds the outbox's lock."""

    def __init__(self, db: sqlite3.Connection, *, max_bytes: int, max_age_s: float,
                 anomaly_max_age_s: float) -> None:
        self.db = db
        self.max_bytes = max_bytes
        self.max_age = {Stream.TELEMETRY: max_age_s, Stream.DRIFT: max_age_s,
                        Stream.ANOMALIES: anomaly_max_age_s}
        self.depth, self.bytes, _ = store.totals(db)

    def added(self, size: int) -> None:
        self.depth += 1
        self.bytes += size

    def removed(self, rows: Iterable[Removed]) -> None:
        for row in rows:
            self.depth -= 1
            self.bytes -= row.size

    def make_room(self, size: int, incoming: Stream, protected: Container[int]) -> None:
        """Drop oldest telemetry, then oldest drift summaries, then oldest anomalies, until
        ``size`` more bytes fit (inside the caller's transaction)."""
        if size > self.max_bytes:
            raise OutboxError(f"{incoming.value} message of {size} bytes exceeds "
                              f"outbox.max_bytes {self.max_bytes}")
        for stream in _DROP_ORDER:
            while self.bytes + size > self.max_bytes:
                victims = [v for v in store.oldest(self.db, stream, 256)
                           if int(v[0]) not in protected]
                if not victims:
                    break
                chosen, freed = [], 0
                for victim in victims:
                    chosen.append(int(victim[0]))
                    freed += int(victim[1])
                    if self.bytes - freed + size <= self.max_bytes:
                        break
                self.drop(store.delete_ids(self.db, chosen), reason="outbox full")
        if self.bytes + size > self.max_bytes:
            raise OutboxError(f"outbox full: {self.bytes} bytes waiting for their PUBACK, "
                              f"cannot take a {incoming.value} message of {size} bytes")

    def expire(self, now: float, protected: Container[int]) -> None:
        """Drop what is older than its stream's age bound (the caller's transaction)."""
        for stream, max_age in self.max_age.items():
            old = [int(r[0]) for r in store.older_than(self.db, stream, now - max_age)
                   if int(r[0]) not in protected]
            if old:
                self.drop(store.delete_ids(self.db, old), reason=f"older than {max_age:.0f}s")

    def drop(self, rows: list[Removed], *, reason: str) -> None:
        if not rows:
            return
        self.removed(rows)
        for stream in Stream:
            mine = [r for r in rows if r.stream is stream]
            if not mine:
                continue
            if stream is Stream.TELEMETRY:
                store.bump(self.db, "dropped_telemetry_messages", len(mine))
                store.bump(self.db, "dropped_telemetry_readings", sum(r.readings for r in mine))
            elif stream is Stream.DRIFT:
                store.bump(self.db, "dropped_drift", len(mine))
            else:
                store.bump(self.db, "dropped_anomalies", len(mine))
            log.warning("outbox: dropped %d %s message(s): %s", len(mine), stream.value, reason)
