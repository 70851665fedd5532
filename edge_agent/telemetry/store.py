"""The outbox's storage: one SQLite file in WAL mode, one explicit transaction per change.

A row is a message waiting to be acknowledged by the hub. ``delivered_at`` is set when the broker
PUBACKs it and cleared when it must go out again; the row leaves only when a hub watermark covers
it or the outbox drops it (counted). ``seq`` is assigned here, per device and stream, from a
counter in the same transaction as the row, so it is monotonic across restarts; the outbox's
stream ``epoch`` is created with the file. Nothing here decides anything: bounds, drops and
resends are the callers' (:mod:`.accounting`, :mod:`.delivery`, :mod:`.outbox`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from shared.messages import new_epoch

__all__ = ["OutboxEntry", "Removed", "Stream", "open_store", "transaction"]

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
    created_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_stream_id ON outbox (stream, id);
CREATE INDEX IF NOT EXISTS outbox_device_seq ON outbox (device_id, stream, seq);
CREATE TABLE IF NOT EXISTS seqs (
    device_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, stream)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "id, device_id, stream, seq, topic, payload, readings, created_at"
CHUNK = 500  # ids per statement, well below SQLite's limit on parameters
# SQLite's page cache, per connection. Its default (2 MB) fills as the outbox grows with the link
# or the hub away, and stays: ~2 MB of the agent's anonymous memory. The OS caches the file's
# pages anyway; 256 KB stores, drains and resends as fast (bench figures in the commit message).
CACHE_KIB = 256


class Stream(StrEnum):
    TELEMETRY = "telemetry"
    ANOMALIES = "anomalies"
    DRIFT = "drift"  # drift summaries: statistics, small and few


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
class Removed:
    """A row that left the outbox: what the byte and drop accounting needs."""

    id: int
    stream: Stream
    size: int
    readings: int


def entry(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(int(row[0]), row[1], Stream(row[2]), int(row[3]), row[4], bytes(row[5]),
                       int(row[6]), float(row[7]))


def open_store(path: Path, synchronous: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous.upper()}")
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    db.executescript(_SCHEMA)
    _upgrade(db)
    return db


def _upgrade(db: sqlite3.Connection) -> None:
    """An outbox written before delivery acknowledgements: add ``delivered_at``, and forget the
    resend window's table (its rows were acknowledged by a broker only; they are sent again)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
    if "delivered_at" not in columns:
        db.execute("ALTER TABLE outbox ADD COLUMN delivered_at REAL")
    if db.execute("SELECT 1 FROM sqlite_master WHERE name='sent'").fetchone():
        with transaction(db):
            db.execute(f"INSERT OR IGNORE INTO outbox ({_COLUMNS}, size) "
                       f"SELECT {_COLUMNS}, size FROM sent")
            db.execute("DROP TABLE sent")
    db.execute("CREATE INDEX IF NOT EXISTS outbox_queued ON outbox (id) "
               "WHERE delivered_at IS NULL")
    # The status file and the heartbeat ask for the oldest row every few seconds, and expiry
    # for the rows past their age every second: without it each is a scan of the whole file
    # (~50 ms each at 58 MB).
    db.execute("CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_at)")


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def read_meta(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
    return None if row is None else str(row[0])


def load_epoch(db: sqlite3.Connection) -> str:
    """The outbox's stream epoch, created with it: a wiped state starts a new one."""
    epoch = read_meta(db, "epoch")
    if epoch is None:
        epoch = new_epoch()
        db.execute("INSERT INTO meta (name, value) VALUES ('epoch', ?)", (epoch,))
    return epoch


def next_seq(db: sqlite3.Connection, device_id: str, stream: Stream) -> int:
    row = db.execute("SELECT next_seq FROM seqs WHERE device_id=? AND stream=?",
                     (device_id, stream.value)).fetchone()
    return int(row[0]) if row else 0


def insert(db: sqlite3.Connection, *, device_id: str, stream: Stream, seq: int, topic: str,
           payload: bytes, readings: int, now: float) -> int:
    """Store a row and move the stream's counter past ``seq`` (inside a transaction)."""
    cur = db.execute(
        "INSERT INTO outbox (device_id, stream, seq, topic, payload, size, readings, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (device_id, stream.value, seq, topic, payload, len(payload), readings, now),
    )
    db.execute(
        "INSERT INTO seqs (device_id, stream, next_seq) VALUES (?, ?, ?) "
        "ON CONFLICT (device_id, stream) DO UPDATE SET next_seq=excluded.next_seq",
        (device_id, stream.value, seq + 1),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def _removed(rows: list[Any]) -> list[Removed]:
    return [Removed(int(r[0]), Stream(r[1]), int(r[2]), int(r[3])) for r in rows]


def delete_ids(db: sqlite3.Connection, ids: Sequence[int]) -> list[Removed]:
    gone: list[Removed] = []
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        gone += _removed(db.execute(
            f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(part))}) "
            "RETURNING id, stream, size, readings", part).fetchall())
    return gone


def delete_covered(db: sqlite3.Connection, device_id: str, stream: Stream,
                   watermark: int) -> list[Removed]:
    return _removed(db.execute(
        "DELETE FROM outbox WHERE device_id=? AND stream=? AND seq<=? "
        "RETURNING id, stream, size, readings", (device_id, stream.value, watermark)).fetchall())


def oldest(db: sqlite3.Connection, stream: Stream, limit: int) -> list[Any]:
    return db.execute("SELECT id, size, readings FROM outbox WHERE stream=? ORDER BY id LIMIT ?",
                      (stream.value, limit)).fetchall()


def older_than(db: sqlite3.Connection, stream: Stream, before: float) -> list[Any]:
    # "+stream": the range on outbox_created finds the few old rows; the planner would rather
    # walk every row of the stream through outbox_stream_id.
    return db.execute("SELECT id, size, readings FROM outbox WHERE +stream=? AND created_at < ?",
                      (stream.value, before)).fetchall()


def queued_after(db: sqlite3.Connection, cursor: int, limit: int) -> list[OutboxEntry]:
    """Rows not delivered, with an id above ``cursor``, oldest first."""
    rows = db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE delivered_at IS NULL AND id > ? "
                      "ORDER BY id LIMIT ?", (cursor, limit)).fetchall()
    return [entry(r) for r in rows]


def lowest_seq(db: sqlite3.Connection, device_id: str, stream: Stream) -> int | None:
    row = db.execute("SELECT MIN(seq) FROM outbox WHERE device_id=? AND stream=?",
                     (device_id, stream.value)).fetchone()
    return None if row[0] is None else int(row[0])


def mark_delivered(db: sqlite3.Connection, ids: Sequence[int], at: float) -> None:
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        db.execute(f"UPDATE outbox SET delivered_at=? WHERE id IN ({','.join('?' * len(part))})",
                   (at, *part))


def undeliver(db: sqlite3.Connection, where: str, params: Sequence[Any]) -> list[int]:
    """Mark delivered rows matching ``where`` to go out again; their ids."""
    return [int(r[0]) for r in db.execute(
        f"UPDATE outbox SET delivered_at=NULL WHERE delivered_at IS NOT NULL AND {where} "
        "RETURNING id", params).fetchall()]


def undeliver_below(db: sqlite3.Connection, device_id: str, stream: Stream, top: int,
                    before: float) -> dict[int, int]:
    """Mark delivered rows of the stream below seq ``top``, delivered at or before ``before``,
    to go out again; their seqs by id."""
    return {int(r[0]): int(r[1]) for r in db.execute(
        "UPDATE outbox SET delivered_at=NULL WHERE delivered_at IS NOT NULL AND device_id=? "
        "AND stream=? AND seq<? AND delivered_at<=? RETURNING id, seq",
        (device_id, stream.value, top, before)).fetchall()}


def newest_delivered(db: sqlite3.Connection, stream: Stream, before: float) -> int | None:
    row = db.execute("SELECT MAX(id) FROM outbox WHERE stream=? AND delivered_at IS NOT NULL "
                     "AND delivered_at <= ?", (stream.value, before)).fetchone()
    return None if row[0] is None else int(row[0])


def bump(db: sqlite3.Connection, name: str, by: int) -> None:
    db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
               "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (name, by))


def counters(db: sqlite3.Connection) -> dict[str, int]:
    return {str(k): int(v) for k, v in db.execute("SELECT name, value FROM counters")}


def delivered_count(db: sqlite3.Connection) -> int:
    """Rows PUBACKed and not yet covered, counted from the indexes (never the rows)."""
    row = db.execute("SELECT (SELECT COUNT(*) FROM outbox) - "
                     "(SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL)").fetchone()
    return int(row[0])


def oldest_created(db: sqlite3.Connection) -> float | None:
    row = db.execute("SELECT MIN(created_at) FROM outbox").fetchone()
    return None if row[0] is None else float(row[0])


def totals(db: sqlite3.Connection) -> tuple[int, int, int]:
    """Rows, bytes and delivered rows held."""
    count, size, delivered = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(delivered_at) FROM outbox").fetchone()
    return int(count), int(size), int(delivered)


Build = Callable[[int], bytes]
