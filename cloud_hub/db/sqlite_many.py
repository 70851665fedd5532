"""One statement for many rows on SQLite, the parameters handed to the driver as they are.

``conn.execute(stmt, [row, row, …])`` makes SQLAlchemy build every row's parameters in Python
(``construct_params``, a dict per row, then a list in the statement's order). At 10,000
devices a batch of 4,000 messages has some 12,000 such rows (the marks' upsert, their
watermarks, the device counters): ``bench/store.py`` measured 170 ms per batch on SQLite with
them and 141 ms without (docs/ingest-measurements.md). :func:`executemany` compiles the
statement once, then gives sqlite3 one tuple per row in the compiled order: the row's values,
and the constants SQLAlchemy bound in the statement itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy.engine import Connection

__all__ = ["direct", "executemany"]

_Compiled = tuple[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]]
_cache: dict[tuple[int, tuple[str, ...]], tuple[Any, _Compiled]] = {}
_lock = threading.Lock()


def executemany(conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute ``stmt`` once per row of ``rows`` (dicts with the same keys), in one
    ``executemany`` of sqlite3. On another database, or with a schema translation (which the
    compiled text would miss), SQLAlchemy's own way."""
    if not rows:
        return
    if not direct(conn):
        conn.execute(stmt, list(rows))
        return
    text, make = _compiled(conn, stmt, tuple(rows[0]))
    conn.exec_driver_sql(text, [make(r) for r in rows])


def direct(conn: Connection) -> bool:
    """Whether SQL text written for SQLite's tables can go to ``conn``'s driver as it is: a
    SQLite connection without a schema translation (which only compiled statements get)."""
    return conn.dialect.name == "sqlite" and not conn.get_execution_options().get(
        "schema_translate_map")


def _compiled(conn: Connection, stmt: Any, keys: tuple[str, ...]) -> _Compiled:
    """The statement's text, and how to make a row's parameters in its order (each converted
    by its type as SQLAlchemy would: ``Float`` makes a float)."""
    key = (id(stmt), keys)
    with _lock:
        found = _cache.get(key)
    if found is not None and found[0] is stmt:
        return found[1]
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(keys))
    names: Sequence[str] = compiled.positiontup or ()
    processors = compiled._bind_processors  # the types' conversions, as execute applies them
    made: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    if not any(n in processors for n in names) and all(n in keys for n in names) \
            and len(names) > 1:
        made = itemgetter(*names)
    else:
        # values bound in the statement itself (literals in a CASE, say), converted once
        fixed = {n: compiled.binds[n].effective_value for n in names if n not in keys}
        fixed = {n: processors[n](v) if n in processors else v for n, v in fixed.items()}
        plan = [(n, processors.get(n), n in keys) for n in names]
        made = lambda r: tuple([(p(r[n]) if p is not None else r[n]) if mine  # noqa: E731
                                else fixed[n] for n, p, mine in plan])
    result = (compiled.string, made)
    with _lock:
        _cache[key] = (stmt, result)  # the statement kept alive, so its id stays its own
    return result
