"""The durable outbox: every telemetry batch and anomaly event is written here before it is sent.

SQLite in WAL mode, one explicit transaction per change. A message gets its ``seq`` here (per
device and stream, monotonic across restarts, because the counter lives in the same database
and transaction as the row) and leaves the outbox only when the broker's PUBACK arrives
(:meth:`ack`). After a reconnect or a restart everything still here is handed out again, in order.
With ``resend_window_s`` an acknowledged row is kept that long in a ``sent`` table, outside the
bound, so that :meth:`Outbox.resend_acked_since` can send it again (see :mod:`.resend` for why).

The outbox is bounded by bytes and age. When a new message does not fit, the oldest telemetry
that is not in flight is dropped first; anomaly events go only when no telemetry is left, and
they expire later (``anomaly_max_age_s``). Every drop is counted, persistently.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge_agent.telemetry import resend
from shared.messages import new_epoch

__all__ = ["DropStats", "Outbox", "OutboxEntry", "OutboxError", "OutboxSnapshot", "Stream"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_stream_id ON outbox (stream, id);
CREATE TABLE IF NOT EXISTS seqs (
    device_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, stream)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_EXPIRE_EVERY_S = 1.0


class OutboxError(RuntimeError):
    """A message the outbox cannot take (e.g. larger than the whole outbox)."""


class Stream(StrEnum):
    TELEMETRY = "telemetry"
    ANOMALIES = "anomalies"


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    device_id: str
    stream: Stream
    seq: int
    topic: str
    payload: bytes
    readings: int
    created_at: float


@dataclass(frozen=True)
class DropStats:
    telemetry_messages: int = 0
    telemetry_readings: int = 0
    anomalies: int = 0

    @property
    def messages(self) -> int:
        return self.telemetry_messages + self.anomalies


@dataclass(frozen=True)
class OutboxSnapshot:
    """What ``edge-agent status`` shows, read without the agent's help."""

    depth: int
    bytes: int
    oldest_created_at: float | None
    drops: DropStats
    next_seq: dict[str, int]
    kept: int = 0  # acknowledged messages kept for a resend (not counted in depth or bytes)


class Outbox:
    """Durable, bounded, ordered store of messages waiting for their PUBACK. Thread-safe."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 7 * 86400,
        anomaly_max_age_s: float = 30 * 86400,
        synchronous: str = "full",
        resend_window_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.anomaly_max_age_s = anomaly_max_age_s
        self.resend_window_s = resend_window_s  # 0: an acknowledged message is deleted at once
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA + resend.SCHEMA)
        row = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM outbox").fetchone()
        self._bytes, self._depth = int(row[0]), int(row[1])
        self._kept, self._kept_bytes = resend.kept_totals(self._db)
        self.epoch = self._load_epoch()
        self._inflight: set[int] = set()
        # In flight when a resend was asked for: their PUBACK may already be on its way (and
        # the message lost like the others), so at that PUBACK they stay and go out again.
        self._again_on_ack: set[int] = set()
        self._cursor = 0
        self._last_expiry = 0.0
        self.resent = 0  # messages handed out again by resend_acked_since, since opening

    def _load_epoch(self) -> str:
        """This outbox's stream epoch, created with it: a wiped state starts a new one."""
        epoch = resend.read_meta(self._db, "epoch")
        if epoch is None:
            epoch = new_epoch()
            resend.write_meta(self._db, "epoch", epoch)
        return epoch

    # -- writing -----------------------------------------------------------------------
    def add(
        self,
        *,
        device_id: str,
        stream: Stream,
        topic: str,
        build: Callable[[int], bytes],
        readings: int = 0,
    ) -> OutboxEntry:
        """Assign the next ``seq``, build the payload with it, and store it durably."""
        now = self._clock()
        with self._lock:
            self._maybe_expire(now)
            with self._transaction():
                row = self._db.execute(
                    "SELECT next_seq FROM seqs WHERE device_id=? AND stream=?",
                    (device_id, stream.value),
                ).fetchone()
                seq = int(row[0]) if row else 0
                payload = build(seq)
                size = len(payload)
                if size > self.max_bytes:
                    raise OutboxError(
                        f"{stream.value} message of {size} bytes exceeds outbox.max_bytes "
                        f"{self.max_bytes}"
                    )
                freed, dropped_count = self._make_room(size, stream)
                cur = self._db.execute(
                    "INSERT INTO outbox (device_id, stream, seq, topic, payload, size, readings,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (device_id, stream.value, seq, topic, payload, size, readings, now),
                )
                self._db.execute(
                    "INSERT INTO seqs (device_id, stream, next_seq) VALUES (?, ?, ?) "
                    "ON CONFLICT (device_id, stream) DO UPDATE SET next_seq=excluded.next_seq",
                    (device_id, stream.value, seq + 1),
                )
            self._bytes += size - freed
            self._depth += 1 - dropped_count
            row_id = cur.lastrowid
            assert row_id is not None
        return OutboxEntry(row_id, device_id, stream, seq, topic, payload, readings, now)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _make_room(self, size: int, incoming: Stream) -> tuple[int, int]:
        """Drop oldest telemetry, then oldest anomalies, until ``size`` more bytes fit."""
        freed, count = 0, 0
        for stream in (Stream.TELEMETRY, Stream.ANOMALIES):
            while self._bytes - freed + size > self.max_bytes:
                victims = self._db.execute(
                    "SELECT id, size, readings FROM outbox WHERE stream=? ORDER BY id LIMIT 256",
                    (stream.value,),
                ).fetchall()
                victims = [v for v in victims if v[0] not in self._inflight]
                if not victims:
                    break
                chosen: list[Any] = []
                for victim in victims:
                    chosen.append(victim)
                    freed += int(victim[1])
                    if self._bytes - freed + size <= self.max_bytes:
                        break
                self._delete_counted(stream, chosen, reason="outbox full")
                count += len(chosen)
        if self._bytes - freed + size > self.max_bytes:
            raise OutboxError(
                f"outbox full: {self._bytes - freed} bytes in flight, cannot take a "
                f"{incoming.value} message of {size} bytes"
            )
        return freed, count

    def _delete_counted(self, stream: Stream, rows: list[Any], *, reason: str) -> None:
        self._db.executemany("DELETE FROM outbox WHERE id=?", [(r[0],) for r in rows])
        if stream is Stream.TELEMETRY:
            self._bump("dropped_telemetry_messages", len(rows))
            self._bump("dropped_telemetry_readings", sum(int(r[2]) for r in rows))
        else:
            self._bump("dropped_anomalies", len(rows))
        log.warning("outbox: dropped %d %s message(s): %s", len(rows), stream.value, reason)

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def _maybe_expire(self, now: float) -> None:
        if now - self._last_expiry < _EXPIRE_EVERY_S:
            return
        self._last_expiry = now
        for stream, max_age in (
            (Stream.TELEMETRY, self.max_age_s), (Stream.ANOMALIES, self.anomaly_max_age_s)
        ):
            rows = self._db.execute(
                "SELECT id, size, readings FROM outbox WHERE stream=? AND created_at < ?",
                (stream.value, now - max_age),
            ).fetchall()
            rows = [r for r in rows if r[0] not in self._inflight]
            if rows:
                with self._transaction():
                    self._delete_counted(stream, rows, reason=f"older than {max_age:.0f}s")
                self._bytes -= sum(int(r[1]) for r in rows)
                self._depth -= len(rows)
        if self._kept:
            # Kept rows are bounded too, by a quarter of the outbox: they are only insurance.
            with self._transaction():
                count, freed = resend.prune_kept(
                    self._db, acked_before=now - self.resend_window_s,
                    kept_bytes=self._kept_bytes, max_bytes=self.max_bytes // 4,
                )
            self._kept -= count
            self._kept_bytes -= freed

    # -- sending -----------------------------------------------------------------------
    def take(self, limit: int) -> list[OutboxEntry]:
        """The next ``limit`` messages not yet handed out, oldest first; they are in flight."""
        if limit <= 0:
            return []
        with self._lock:
            # After a resend lowered the cursor, messages still in flight may lie beyond it.
            skip = sum(1 for i in self._inflight if i > self._cursor)
            rows = self._db.execute(
                "SELECT id, device_id, stream, seq, topic, payload, readings, created_at "
                "FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (self._cursor, limit + skip),
            ).fetchall()
            if skip:
                rows = [r for r in rows if int(r[0]) not in self._inflight][:limit]
            if rows:
                self._cursor = int(rows[-1][0])
                self._inflight.update(int(r[0]) for r in rows)
        return [
            OutboxEntry(int(r[0]), r[1], Stream(r[2]), int(r[3]), r[4], bytes(r[5]), int(r[6]),
                        float(r[7]))
            for r in rows
        ]

    def ack(self, ids: Iterable[int]) -> int:
        """The broker has these: they leave the outbox (kept for ``resend_window_s`` if set).
        Returns how many were still here."""
        wanted = list(ids)
        if not wanted:
            return 0
        with self._lock:
            again = [i for i in wanted if i in self._again_on_ack]
            done = [i for i in wanted if i not in self._again_on_ack] if again else wanted
            with self._transaction():
                if self.resend_window_s > 0:
                    sizes = resend.keep_acked(self._db, done, self._clock())
                else:
                    sizes = resend.delete_acked(self._db, done)
            self._inflight.difference_update(wanted)
            if again:
                self._again_on_ack.difference_update(again)
                self._cursor = min(self._cursor, min(again) - 1)
            self._bytes -= sum(sizes)
            self._depth -= len(sizes)
            if self.resend_window_s > 0:
                self._kept += len(sizes)
                self._kept_bytes += sum(sizes)
        return len(sizes)

    def resend_acked_since(self, since: float) -> int:
        """Hand out again, first and in order, every message acknowledged at or after
        ``since`` (and any in flight now, at its PUBACK); returns how many."""
        with self._lock:
            with self._transaction():
                restored = resend.restore_since(self._db, since)
            size = sum(s for _, s in restored)
            self._kept -= len(restored)
            self._kept_bytes -= size
            self._bytes += size
            self._depth += len(restored)
            if restored:
                self._cursor = min(self._cursor, restored[0][0] - 1)
            self._again_on_ack.update(self._inflight)
            count = len(restored) + len(self._inflight)
            self.resent += count
        return count

    def requeue_inflight(self) -> None:
        """The link went down: everything not acknowledged is handed out again, in order."""
        with self._lock:
            self._inflight.clear()
            self._again_on_ack.clear()
            self._cursor = 0

    # -- looking -----------------------------------------------------------------------
    def depth(self) -> int:
        return self._depth

    def pending_bytes(self) -> int:
        return self._bytes

    def inflight(self) -> int:
        return len(self._inflight)

    def kept(self) -> int:
        """Acknowledged messages kept for a resend."""
        return self._kept

    def meta(self, name: str) -> str | None:
        """A small durable note kept beside the messages (e.g. the last hub session seen)."""
        with self._lock:
            return resend.read_meta(self._db, name)

    def set_meta(self, name: str, value: str) -> None:
        with self._lock:
            resend.write_meta(self._db, name, value)

    def oldest_age(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT MIN(created_at) FROM outbox").fetchone()
        return 0.0 if row[0] is None else max(0.0, self._clock() - float(row[0]))

    def drops(self) -> DropStats:
        with self._lock:
            return _read_drops(self._db)

    def next_seq(self, device_id: str, stream: Stream) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT next_seq FROM seqs WHERE device_id=? AND stream=?",
                (device_id, stream.value),
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def inspect(path: Path | str) -> OutboxSnapshot:
        """Read an outbox another process may be writing, without changing it."""
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
        try:
            depth, size, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_at) FROM outbox"
            ).fetchone()
            seqs = {
                f"{d}/{s}": int(n)
                for d, s, n in db.execute("SELECT device_id, stream, next_seq FROM seqs")
            }
            try:
                kept = resend.kept_totals(db)[0]
            except sqlite3.OperationalError:  # written by a version that kept nothing
                kept = 0
            return OutboxSnapshot(int(depth), int(size), oldest, _read_drops(db), seqs, kept)
        finally:
            db.close()


def _read_drops(db: sqlite3.Connection) -> DropStats:
    values = dict(db.execute("SELECT name, value FROM counters").fetchall())
    return DropStats(
        telemetry_messages=int(values.get("dropped_telemetry_messages", 0)),
        telemetry_readings=int(values.get("dropped_telemetry_readings", 0)),
        anomalies=int(values.get("dropped_anomalies", 0)),
    )
