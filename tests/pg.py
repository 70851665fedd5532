"""A PostgreSQL database made for one test at 127.0.0.1:5432 (trust auth, user postgres) and
dropped after it; the test is skipped when the server is not there."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

__all__ = ["PG_SERVER", "made_pg_database", "pg_database"]

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@contextlib.contextmanager
def made_pg_database(prefix: str = "edgeloop_t_") -> Iterator[str]:
    """The URL of an empty database of its own, dropped on exit (skips the test when the server
    is not there)."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The URL of an empty database of its own."""
    with made_pg_database() as url:
        yield url
