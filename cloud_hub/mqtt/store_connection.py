"""A writer's own database connection for ingest, and the typed failures of storing a batch.

Each ingest writer (:mod:`cloud_hub.mqtt.ingest`) keeps one connection, not a pool checkout per
batch (which pings it). Whatever fails while storing comes out as :class:`DatabaseUnavailable`
(down, locked, a deadlock, a lost connection: keep the batch and retry) or :class:`RowsRefused`
(the database will not take something in these rows: find the message and dead-letter it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlmodel import Session

__all__ = ["DatabaseUnavailable", "RowsRefused", "StoreConnection", "StoreError", "classify"]

log = logging.getLogger(__name__)


class StoreError(Exception):
    """Storing a batch failed; the subclass says what to do about it."""


class DatabaseUnavailable(StoreError):
    """The database is down, locked or chose this transaction as a deadlock victim: retry."""


class RowsRefused(StoreError):
    """The database refused something in these rows: find the message and dead-letter it."""


def classify(exc: Exception) -> StoreError:
    """The typed form of an exception raised while storing."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return DatabaseUnavailable(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, SQLAlchemyError | ValueError | TypeError | OverflowError):
        return RowsRefused(f"{type(exc).__name__}: {exc}")
    return RowsRefused(f"unexpected {type(exc).__name__}: {exc}")


class StoreConnection:
    """A writer's own database connection, opened when there is none (see the module's doc)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session on the connection; any failure comes out typed (:func:`classify`), and
        drops the connection: a failed one may be dead, and a new one costs one pool checkout
        (which pings it), not one per batch."""
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
            with Session(bind=self._connection) as session:
                yield session
        except Exception as exc:
            self.drop()
            if isinstance(exc, StoreError):
                raise
            raise classify(exc) from exc

    def drop(self) -> None:
        conn, self._connection = self._connection, None
        if conn is None:
            return
        try:
            conn.close()  # back to the pool, which discards it if it was invalidated
        except Exception as exc:  # a dead connection may fail even to close: it is gone
            log.debug("ingest: closing the store's connection failed (%s)", exc)
