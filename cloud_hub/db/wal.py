"""SQLite's WAL checkpoints in a thread of their own, not in ingest's commits.

In WAL mode a commit appends its pages to the ``-wal`` file, and SQLite's automatic checkpoint
copies them into the database file (and, with ``synchronous=NORMAL``, syncs it) inside the
commit that takes the log past ``wal_autocheckpoint`` pages. At a few thousand messages a
commit that is most commits, so ingest's one thread waited on the copy and the sync.
:class:`WalCheckpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own
every ``interval_s``; the sqlite3 module releases the GIL while SQLite works, so the copy runs
beside ingest on another core. The engine's connections keep an automatic checkpoint as a
safety net (:data:`AUTOCHECKPOINT_PAGES`) for when no checkpointer runs (the CLI, tests) or it
falls behind. A PASSIVE checkpoint never blocks a writer or a reader.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.engine import Engine

__all__ = ["AUTOCHECKPOINT_PAGES", "WalCheckpointer"]

log = logging.getLogger(__name__)

# 16,384 pages of 4 KiB: 64 MiB of log before a commit checkpoints by itself (SQLite's default
# is 1,000 pages, less than one ingest commit of 4,000 messages writes).
AUTOCHECKPOINT_PAGES = 16_384


class WalCheckpointer:
    """Checkpoints a SQLite file database every ``interval_s`` until ``stop()``; does nothing
    on PostgreSQL or an in-memory database."""

    def __init__(self, engine: Engine, *, interval_s: float = 0.25) -> None:
        self._engine = engine
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # rounds that ran
        self.frames_checkpointed = 0  # pages copied into the database, summed over rounds
        self._last = (0, 0)  # (frames in the log, frames copied) at the last round
        self.failures = 0
        database = engine.url.database
        self.applies = engine.dialect.name == "sqlite" and database not in (None, "", ":memory:")

    def start(self) -> None:
        if not self.applies or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hub-wal-checkpoint",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def snapshot(self) -> dict[str, Any]:
        return {"wal_checkpoints": self.checkpoints,
                "wal_frames_checkpointed": self.frames_checkpointed,
                "wal_checkpoint_failures": self.failures}

    def _run(self) -> None:
        connection: Any = None
        failing = False
        try:
            while not self._stop.wait(self._interval):
                try:
                    if connection is None:
                        connection = self._engine.raw_connection()
                    self.checkpoint(connection)
                except Exception as exc:  # a locked or vanished file must not end the thread
                    self.failures += 1
                    if not failing:  # once per run of failures, not four times a second
                        log.warning("WAL checkpoint failed (%s); trying again every %.2f s",
                                    exc, self._interval)
                    failing = True
                    if connection is not None:
                        connection.invalidate()
                        connection = None
                    continue
                if failing:
                    log.info("WAL checkpoints work again (%d failures so far)", self.failures)
                    failing = False
        finally:
            if connection is not None:
                connection.close()

    def checkpoint(self, connection: Any) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (busy, frames in the log, frames checkpointed)."""
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            busy, logged, done = cursor.fetchone()
        finally:
            cursor.close()
        busy, logged, done = int(busy), int(logged), int(done)
        self.checkpoints += 1
        self.frames_checkpointed += self._newly_copied(logged, done)
        return busy, logged, done

    def _newly_copied(self, logged: int, done: int) -> int:
        """Frames this round copied. SQLite counts the frames of the whole log since it last
        restarted, copied by any round; the log restarts (a writer starts it over) only once
        all of it was copied, so a log that shrank, or grew after being copied whole, is a new
        one (a reader can keep a copied log from restarting: rare, and then this counts the
        earlier rounds' frames once more)."""
        last_logged, last_done = self._last
        self._last = (logged, done)
        if logged < 0 or done < 0:  # not in WAL mode
            return 0
        if logged < last_logged or (last_done >= last_logged and logged != last_logged):
            return done
        return max(done - last_done, 0)
