"""Many rows in one PostgreSQL statement of constant text: columns passed as arrays, ``unnest``.

A multi-row ``INSERT … VALUES (…), (…)`` has a different text for every row count, so neither
psycopg's parse cache nor the server's prepared statements ever hit (profiled: parsing the
query text was an eighth of the hub's time on PostgreSQL). ``unnest(:a::text[], :b::bigint[],
…)`` has one text whatever the count; psycopg sends each column as one binary array. Rows come
out of ``unnest`` in the order given, so an ``INSERT … SELECT … ON CONFLICT`` takes its row
locks in that order (callers sort by key, so two writers never wait on each other in a cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.type_api import TypeEngine

__all__ = ["Columns", "as_arrays", "in_list", "unnest_rows", "unnest_select"]

Columns = Sequence[tuple[str, type[TypeEngine[Any]] | TypeEngine[Any]]]


def unnest_rows(columns: Columns, *, name: str = "r") -> Any:
    """``unnest(:col1, :col2, …) AS name(col1, col2, …)``: a derived table whose columns are
    the array parameters named like the columns."""
    params = [bindparam(n, type_=ARRAY(t)) for n, t in columns]
    return func.unnest(*params).table_valued(*[n for n, _ in columns]).render_derived(name=name)


def unnest_select(columns: Columns, *,
                  casts: dict[str, Callable[[Any], ColumnElement[Any]]] | None = None,
                  name: str = "r") -> Any:
    """SELECT every column of :func:`unnest_rows`; ``casts`` maps a column name to a function
    of the derived table's column that gives the expression to select instead."""
    rows = unnest_rows(columns, name=name)
    casts = casts or {}
    return select(*[casts[n](rows.c[n]) if n in casts else rows.c[n] for n, _ in columns])


def as_arrays(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """The parameters of an unnest statement: one list per column."""
    return {n: [r[n] for r in rows] for n in names}


def in_list(column: Any, values: Sequence[Any], dialect: str, type_: Any = None) -> Any:
    """``column IN (…)``; on PostgreSQL ``column = ANY(:array)``, one text for any count."""
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(type_ or column.type)))
    return column.in_(list(values))
