"""Keyset pagination done in SQL: a page is ``ORDER BY key LIMIT n+1`` after the last key seen.

The order key of a listing always ends with the table's primary key, so it is unique and a page
boundary never skips or repeats a row, also while rows are being inserted. The caller gets the
key of the last row it was given when there is more to read; the API turns it into an opaque
cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import tuple_
from sqlmodel import Session

__all__ = ["CursorError", "Key", "Page", "keyset_page", "primary_key_columns"]

T = TypeVar("T")
Key = list[Any]


class CursorError(ValueError):
    """A cursor that does not fit the listing it was given to."""


@dataclass(frozen=True)
class Page(Generic[T]):
    rows: list[T]
    next_key: Key | None  # the key of the last row, when more rows may follow


def primary_key_columns(model: Any, *, skip: Sequence[str] = ()) -> list[Any]:
    """The model's primary key columns (as mapped attributes), in table order."""
    names = [c.name for c in model.__table__.primary_key.columns if c.name not in skip]
    return [getattr(model, name) for name in names]


def keyset_page(
    session: Session, stmt: Any, *, order: Sequence[Any], limit: int,
    after: Key | None = None, descending: bool = False,
) -> Page[Any]:
    """One page of ``stmt`` (a select of ORM rows) ordered by ``order``, after key ``after``."""
    if after is not None:
        _check_key(after, order)
        key = tuple_(*order)
        stmt = stmt.where(key < tuple_(*after) if descending else key > tuple_(*after))
    stmt = stmt.order_by(*[c.desc() if descending else c.asc() for c in order])
    rows = list(session.exec(stmt.limit(limit + 1)))
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    last = rows[-1]
    return Page(rows, [getattr(last, c.key) for c in order])


def _check_key(after: Key, order: Sequence[Any]) -> None:
    """A key from a client must fit the listing's columns (a database may refuse a mismatch)."""
    if len(after) != len(order):
        raise CursorError(f"cursor has {len(after)} value(s); this listing's key has {len(order)}")
    for value, column in zip(after, order, strict=True):
        expected = column.type.python_type
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise CursorError(f"cursor value {value!r} does not fit {column.key}")
