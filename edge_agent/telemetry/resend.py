"""Acknowledged messages the outbox keeps for a while, so that it can send them again.

A PUBACK only says that the broker took a message, not that a hub got it: a broker that lost
its state (a crash between saves, a restart without persistence, a fail-over) acknowledges
what arrives before the hub has subscribed again and delivers it to nobody. So the outbox moves
an acknowledged row into the ``sent`` table instead of deleting it; when a hub announces a new
session after an outage (:mod:`edge_agent.telemetry.presence`), the rows acknowledged since
then go back into ``outbox`` with their original ids and are sent again (the hub deduplicates
on seq). These functions run inside the caller's transaction, under the outbox's lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

__all__ = [
    "SCHEMA",
    "delete_acked",
    "keep_acked",
    "kept_totals",
    "prune_kept",
    "read_meta",
    "restore_since",
    "write_meta",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    created_at REAL NOT NULL,
    acked_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_acked_at ON sent (acked_at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "id, device_id, stream, seq, topic, payload, size, readings, created_at"
_CHUNK = 500  # ids per statement, well below SQLite's limit on parameters


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def delete_acked(db: sqlite3.Connection, ids: Sequence[int]) -> list[int]:
    """Delete outbox rows; the sizes of those that were there."""
    sizes: list[int] = []
    for chunk in _chunks(ids):
        rows = db.execute(
            f"DELETE FROM outbox WHERE id IN ({_marks(len(chunk))}) RETURNING size", chunk
        ).fetchall()
        sizes.extend(int(r[0]) for r in rows)
    return sizes


def keep_acked(db: sqlite3.Connection, ids: Sequence[int], acked_at: float) -> list[int]:
    """Move outbox rows into ``sent``; the sizes of those that were there."""
    for chunk in _chunks(ids):
        db.execute(
            f"INSERT OR REPLACE INTO sent ({_COLUMNS}, acked_at) SELECT {_COLUMNS}, ? "
            f"FROM outbox WHERE id IN ({_marks(len(chunk))})",
            (acked_at, *chunk),
        )
    return delete_acked(db, ids)


def kept_totals(db: sqlite3.Connection) -> tuple[int, int]:
    """How many rows ``sent`` holds, and their bytes."""
    count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM sent").fetchone()
    return int(count), int(size)


def prune_kept(
    db: sqlite3.Connection, *, acked_before: float, kept_bytes: int, max_bytes: int
) -> tuple[int, int]:
    """Forget rows acknowledged before ``acked_before``, then the oldest until the rest fit in
    ``max_bytes``; returns how many rows and bytes went."""
    gone = [int(r[0]) for r in db.execute(
        "DELETE FROM sent WHERE acked_at < ? RETURNING size", (acked_before,)
    )]
    count, freed = len(gone), sum(gone)
    excess = kept_bytes - freed - max_bytes
    if excess > 0:
        victims: list[int] = []
        for row_id, size in db.execute("SELECT id, size FROM sent ORDER BY acked_at, id"):
            victims.append(int(row_id))
            excess -= int(size)
            freed += int(size)
            if excess <= 0:
                break
        for chunk in _chunks(victims):
            db.execute(f"DELETE FROM sent WHERE id IN ({_marks(len(chunk))})", chunk)
        count += len(victims)
    return count, freed


def restore_since(db: sqlite3.Connection, since: float) -> list[tuple[int, int]]:
    """Move rows acknowledged at or after ``since`` back into ``outbox`` with their original
    ids; the (id, size) of each row restored, in id order."""
    rows = db.execute(
        f"DELETE FROM sent WHERE acked_at >= ? RETURNING {_COLUMNS}", (since,)
    ).fetchall()
    restored: list[tuple[int, int]] = []
    for row in sorted(rows, key=lambda r: int(r[0])):
        # An id is in one table or the other; IGNORE only guards against counting a row twice.
        cur = db.execute(f"INSERT OR IGNORE INTO outbox ({_COLUMNS}) VALUES "
                         f"({_marks(len(row))})", row)
        if cur.rowcount == 1:
            restored.append((int(row[0]), int(row[6])))
    return restored


def read_meta(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
    return None if row is None else str(row[0])


def write_meta(db: sqlite3.Connection, name: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value=excluded.value",
        (name, value),
    )
