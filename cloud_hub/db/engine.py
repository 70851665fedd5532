"""Engine set-up: SQLite in WAL mode by default, any SQLAlchemy URL (e.g. postgresql+psycopg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import create_engine

import cloud_hub.db.drift_tables  # noqa: F401  (registers the tables on SQLModel.metadata)
import cloud_hub.db.enrollments  # noqa: F401
import cloud_hub.db.key_tables  # noqa: F401
import cloud_hub.db.ops_tables  # noqa: F401
import cloud_hub.db.registry_tables  # noqa: F401
import cloud_hub.db.rollup_tables  # noqa: F401
import cloud_hub.db.tables  # noqa: F401
from cloud_hub.db.wal import AUTOCHECKPOINT_PAGES

__all__ = ["driver_message", "make_engine"]


def make_engine(url: str, *, create: bool = True) -> Engine:
    """Open the database at ``url``; with ``create``, bring its schema to this code's
    (:mod:`cloud_hub.db.migrate`: created when empty, upgraded, refused when newer)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Connections are used from the ingest worker, the job thread and request threads.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.driver == "psycopg":
        event.listen(engine, "connect", _binary_arrays)
    if create:
        from cloud_hub.db.migrate import prepare  # Alembic loads only where a schema is made

        prepare(engine)
    return engine


def driver_message(exc: DBAPIError) -> str:
    """The first line of what the database driver said (without SQLAlchemy's SQL and
    parameters), for a log line or an operator's error message."""
    return str(exc.orig).strip().splitlines()[0]


SQLITE_CACHE_KIB = 64 * 1024


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # A page cache of up to 64 MiB per connection (SQLite's default is 2 MiB), filled only as
    # used: ingest's index pages stay in it as the database grows past a few GB. bench/ingest.py
    # on SQLite, the overload after the held flood and the saturation ramp: 13,119 and 15,072
    # messages per hub CPU-second against 12,440 and 12,495 without; hub RSS +70-90 MB.
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    # The hub checkpoints in a thread of its own (cloud_hub/db/wal.py); this is the safety net.
    cursor.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cursor.close()


def _binary_arrays(dbapi_connection: Any, _record: Any) -> None:
    """Lists go to PostgreSQL as binary arrays: ingest sends its columns as arrays
    (:mod:`cloud_hub.db.pg_bulk`), and psycopg's text format escapes every bytea element
    (profiled: a fifth of the hub's time on PostgreSQL went there); flat lists are built in
    C (:mod:`cloud_hub.db.pg_arrays`)."""
    from cloud_hub.db.pg_arrays import FastListBinaryDumper

    dbapi_connection.adapters.register_dumper(list, FastListBinaryDumper)
