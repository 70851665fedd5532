"""The database a benchmark's hub stores into: SQLite (the hub's own file), or a PostgreSQL
database at 127.0.0.1:5432 made for the run and dropped after, whatever happens in between.
Shared by ``bench/ingest.py`` and ``bench/store.py``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import create_engine, text

__all__ = ["PG_SERVER", "Database", "database"]

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@dataclass
class Database:
    kind: str  # sqlite | postgresql
    url: str | None  # None: the hub's default SQLite file


@contextmanager
def database(kind: str) -> Iterator[Database]:
    """A database of ``kind`` for one run (SQLite: the hub's file, in its data directory)."""
    if kind == "sqlite":
        yield Database(kind, None)
        return
    name = f"edgeloop_bench_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield Database(kind, f"{PG_SERVER}/{name}")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
