"""The hub's WAL checkpoints run in a thread of their own (cloud_hub/db/wal.py): the log is
copied into the database file beside ingest, and a commit checkpoints by itself only past a
64 MiB safety net."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from cloud_hub.db.engine import make_engine
from cloud_hub.db.wal import AUTOCHECKPOINT_PAGES, WalCheckpointer

pytestmark = pytest.mark.hub


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _fill(engine: Engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, b BLOB)"))
        conn.execute(text("INSERT INTO filler (b) VALUES (randomblob(3000))"),
                     [{} for _ in range(rows)])


def _pages(engine: Engine, path: Path) -> tuple[int, int]:
    """(pages in the database file, pages of the database as read: the file and its log);
    equal once a checkpoint has copied everything. Read without checkpointing (SQLite before
    3.46 takes wal_checkpoint(NOOP) as PASSIVE)."""
    with engine.connect() as conn:
        size = int(conn.execute(text("PRAGMA page_size")).scalar_one())
        pages = int(conn.execute(text("PRAGMA page_count")).scalar_one())
    return path.stat().st_size // size, pages


def _copied(engine: Engine, path: Path) -> bool:
    on_file, read = _pages(engine, path)
    return on_file == read


def test_commits_leave_the_log_to_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == AUTOCHECKPOINT_PAGES
        _fill(engine, 2000)  # ~2,000 pages: past SQLite's default of 1,000, under the net
        on_file, read = _pages(engine, path)
        assert read - on_file > 1000, (on_file, read)  # the commit did not checkpoint

        checkpointer = WalCheckpointer(engine, interval_s=0.05)
        assert checkpointer.applies
        checkpointer.start()
        try:
            # The file shows the copy as soon as SQLite has made it, a moment before the
            # thread adds the round to its counter: wait for both.
            assert _wait(lambda: _copied(engine, path)
                         and checkpointer.frames_checkpointed >= read - on_file), (
                checkpointer.snapshot())
            _fill(engine, 500)  # written while it runs: copied too
            assert _wait(lambda: _copied(engine, path))
        finally:
            checkpointer.stop()
        assert checkpointer.failures == 0
        assert checkpointer.snapshot()["wal_checkpoints"] >= 2
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM filler")).scalar() == 2500
    finally:
        engine.dispose()


def test_frames_copied_are_counted_once_per_round_that_copies_them(tmp_path: Path) -> None:
    """SQLite reports the frames of the whole log copied so far, by any round: a round that
    finds nothing new adds nothing (the sum counted the log again at every round before)."""
    path = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{path}")
    checkpointer = WalCheckpointer(engine)
    connection = engine.raw_connection()
    try:
        _fill(engine, 2000)
        _busy, logged, done = checkpointer.checkpoint(connection)
        assert done == logged > 1000
        assert checkpointer.checkpoint(connection)[1:] == (logged, done)  # nothing new
        assert checkpointer.frames_checkpointed == done
        _fill(engine, 500)  # the log starts over, all of it copied: a new log of ~500 pages
        _busy, again, copied = checkpointer.checkpoint(connection)
        assert copied == again and 400 < again < logged
        assert checkpointer.frames_checkpointed == done + copied
    finally:
        connection.close()
        engine.dispose()


def test_the_net_checkpoints_when_no_checkpointer_runs(tmp_path: Path) -> None:
    """Without the thread (the CLI, another process) the log still stops growing: the
    commit that takes it past the net copies it."""
    path = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        _fill(engine, 20_000)  # ~20,000 pages in one commit
        on_file, read = _pages(engine, path)
        assert on_file == read and read > AUTOCHECKPOINT_PAGES, (on_file, read)
    finally:
        engine.dispose()


def test_a_failing_checkpoint_does_not_end_the_thread(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{path}")
    checkpointer = WalCheckpointer(engine, interval_s=0.05)
    calls = {"n": 0}
    real = checkpointer.checkpoint

    def flaky(connection: object) -> tuple[int, int, int]:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("disk I/O error")
        return real(connection)

    checkpointer.checkpoint = flaky  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="cloud_hub.db.wal")
    try:
        _fill(engine, 2000)
        assert not _copied(engine, path)
        checkpointer.start()
        assert _wait(lambda: checkpointer.checkpoints >= 1)
        assert checkpointer.failures == 2
        assert _wait(lambda: _copied(engine, path))
    finally:
        checkpointer.stop()
        engine.dispose()
    failed = [r for r in caplog.records if "WAL checkpoint failed" in r.getMessage()]
    assert len(failed) == 1 and "disk I/O error" in failed[0].getMessage()  # once per run
    assert any("work again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/none"])
def test_nothing_to_checkpoint_elsewhere(url: str) -> None:
    engine = create_engine(url)
    checkpointer = WalCheckpointer(engine)
    assert not checkpointer.applies
    checkpointer.start()  # no thread, nothing to stop
    checkpointer.stop()
    assert checkpointer.checkpoints == 0
