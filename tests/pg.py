"""A PostgreSQL database made for one test at 127.0.0.1:5432 (trust auth, user postgres) and
dropped after it; the test is skipped when the server is not there."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from cloud_hub.db.engine import make_engine

__all__ = ["PG_SERVER", "PG_TEST", "hub_engine", "hub_engines", "made_pg_database",
           "pg_database", "pg_schema_engine"]

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_TEST = f"{PG_SERVER}/test"  # the database every session's server has


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


@contextlib.contextmanager
def hub_engine(kind: str, tmp_path: Path) -> Iterator[Engine]:
    """The hub's engine on SQLite (a file in ``tmp_path``) or on a PostgreSQL database of its
    own (``kind`` "sqlite" or "postgresql"), disposed of on exit."""
    with hub_engines(kind, tmp_path, 1) as (made,):
        yield made


@contextlib.contextmanager
def hub_engines(kind: str, tmp_path: Path, count: int) -> Iterator[list[Engine]]:
    """``count`` engines on one such database, each with its own pool, as hub processes
    sharing it have; disposed of on exit."""
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'hub.db'}" if kind == "sqlite"
               else stack.enter_context(made_pg_database()))
        engines = [make_engine(url) for _ in range(count)]
        try:
            yield engines
        finally:
            for made in engines:
                made.dispose()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The URL of an empty database of its own."""
    with made_pg_database() as url:
        yield url


@contextlib.contextmanager
def pg_schema_engine(application_name: str | None = None) -> Iterator[Engine]:
    """The hub's engine on a schema of its own in the database ``test``, with the hub's tables,
    dropped on exit (skips the test when the server is not there). ``application_name`` marks
    the engine's connections, so that a test can terminate those and no other client's."""
    schema = f"edgeloop_{uuid.uuid4().hex[:8]}"
    try:
        admin = make_engine(PG_TEST, create=False)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (database test) is not reachable: {exc}")
    url = PG_TEST if application_name is None else f"{PG_TEST}?application_name={application_name}"
    engine = make_engine(url, create=False).execution_options(
        schema_translate_map={None: schema})
    SQLModel.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
