"""Many rows in one PostgreSQL statement of constant text: columns passed as arrays, ``unnest``.

A multi-row ``INSERT … VALUES (…), (…)`` has a different text for every row count, so neither
psycopg's parse cache nor the server's prepared statements ever hit (profiled: parsing the
query text was an eighth of the hub's time on PostgreSQL). ``unnest(:a::text[], :b::bigint[],
…)`` has one text whatever the count. Rows come out of ``unnest`` in the order given, so an
``INSERT … SELECT … ON CONFLICT`` takes its row locks in that order (callers sort by key, so two
writers never wait on each other in a cycle).

Columns of text, integers and floats travel as the text of an array literal, built with one
``join`` (:func:`array_literal`) and cast to the array type by the server. psycopg's own list
dumper runs Python code and a regular expression per element: 2.5 ms for 4,000 device ids
against 0.5 ms for the literal, round trip included, and about a quarter of ``store_batch`` at
10,000 devices, where each batch passes some 20 such columns (docs/scaling.md). Other types
(bytes) go as lists, as psycopg dumps them.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from sqlalchemy import Float, Integer, String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.types import TypeDecorator

__all__ = ["Columns", "array_literal", "array_param", "as_arrays", "in_list", "unnest_rows",
           "unnest_select"]

Columns = Sequence[tuple[str, type[TypeEngine[Any]] | TypeEngine[Any]]]
Kind = Literal["text", "int", "float"]

# An element of an array literal that the server would not read back as the same text: it is
# empty, holds a character the array syntax gives a meaning to (or white space, which it
# trims), or spells NULL. Such elements are quoted.
_SPECIAL = re.compile(r'["{}\\\s]')
_EMPTY_OR_NULL = re.compile(r"(?:^|,)(?:null)?(?:,|$)", re.IGNORECASE)
_FLOATS = {math.inf: "Infinity", -math.inf: "-Infinity"}


def array_literal(values: Sequence[Any], kind: Kind) -> str:
    """The text of the PostgreSQL array literal of ``values`` (None is NULL): what the server
    reads back as exactly these values, cast to ``text[]``, ``bigint[]`` or ``float8[]``.
    One ``join`` when every element can go as it is; otherwise each element is written on its
    own (NULLs, non-finite floats, text that needs quotes)."""
    if not values:
        return "{}"
    try:
        if kind == "text":
            body = ",".join(values)
            if (body.count(",") == len(values) - 1 and _SPECIAL.search(body) is None
                    and _EMPTY_OR_NULL.search(body) is None):
                return "{" + body + "}"
        elif kind == "int":
            return "{" + ",".join(map(int.__repr__, values)) + "}"
        else:
            body = ",".join(map(float.__repr__, values))
            if "n" not in body:  # no inf and no nan
                return "{" + body + "}"
    except TypeError:  # a None, or a number of another type: element by element
        pass
    return "{" + ",".join(map(_ELEMENT[kind], values)) + "}"


def _text(v: str | None) -> str:
    if v is None:
        return "NULL"
    if not isinstance(v, str):
        raise TypeError(f"an array of text got {type(v).__name__} {v!r}")
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _int(v: Any) -> str:
    return "NULL" if v is None else int.__repr__(operator.index(v))


def _float(v: Any) -> str:
    if v is None:
        return "NULL"
    f = float(v)
    return "NaN" if f != f else _FLOATS.get(f) or float.__repr__(f)


_ELEMENT: dict[Kind, Callable[[Any], str]] = {"text": _text, "int": _int, "float": _float}


class _ArrayText(TypeDecorator[Sequence[Any]]):
    """An array parameter whose list is sent as the text of its literal. psycopg sends a str
    untyped, and the server takes it as the array type that the statement casts the
    parameter to: a parameter of that type, evaluated once. (A cast from text written into
    the statement instead was re-evaluated per row by a generic plan's sequential scan.)"""

    impl = ARRAY
    cache_ok = True

    def __init__(self, item_type: TypeEngine[Any]) -> None:
        super().__init__(item_type)
        self.item_type = item_type

    def bind_processor(self, dialect: Any) -> Callable[[Any], str | None]:
        kind = _kind(self.item_type)
        assert kind is not None

        def process(value: Sequence[Any] | None) -> str | None:
            return None if value is None else array_literal(value, kind)

        return process


def _kind(item: TypeEngine[Any]) -> Kind | None:
    # A decorator that only wraps its type (sqlmodel's AutoString) passes values as they are.
    while (isinstance(item, TypeDecorator)
           and type(item).process_bind_param is TypeDecorator.process_bind_param):
        item = item.impl_instance
    if isinstance(item, Float):
        return "float"
    if isinstance(item, Integer):
        return "int"
    if isinstance(item, String) and not isinstance(item, TypeDecorator):
        return "text"
    return None


def array_param(item: type[TypeEngine[Any]] | TypeEngine[Any]) -> TypeEngine[Any]:
    """The type of an array parameter of ``item``s: sent as its literal's text
    (:func:`array_literal`) for text, integers and floats, as a list otherwise."""
    instance = item() if isinstance(item, type) else item
    kind = _kind(instance)
    return ARRAY(instance) if kind is None else _ArrayText(instance)


def unnest_rows(columns: Columns, *, name: str = "r") -> Any:
    """``unnest(:col1, :col2, …) AS name(col1, col2, …)``: a derived table whose columns are
    the array parameters named like the columns."""
    params = [bindparam(n, type_=array_param(t)) for n, t in columns]
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
        return column == any_(bindparam(None, list(values),
                                        type_=array_param(type_ or column.type)))
    return column.in_(list(values))
