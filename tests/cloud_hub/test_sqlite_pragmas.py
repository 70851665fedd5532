"""Every SQLite connection of the hub gets its settings: WAL, synchronous NORMAL, foreign keys,
and a page cache of 64 MiB (the default 2 MiB re-reads ingest's index pages as the file grows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from cloud_hub.db.engine import SQLITE_CACHE_KIB, make_engine

pytestmark = pytest.mark.hub


def test_each_connection_gets_the_hubs_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
                assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
                assert conn.execute(text("PRAGMA cache_size")).scalar() == -SQLITE_CACHE_KIB
    finally:
        engine.dispose()
