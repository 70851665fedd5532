"""Column types that give typed values back: a ``StrEnum`` in a string column, and a pydantic
model in a JSON column.

Both keep the stored form exactly what a plain column held before (the enum's value; the
model's JSON), so no migration is needed and a database written by an older hub reads back.
A value that is not a member, or JSON that does not validate, fails where it is written.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import JSON, Column
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field
from sqlmodel.sql.sqltypes import AutoString

__all__ = ["ModelJSON", "StrEnumType", "enum_field", "model_field"]

E = TypeVar("E", bound=StrEnum)
M = TypeVar("M", bound=BaseModel)


class StrEnumType(TypeDecorator[E], Generic[E]):
    """A ``StrEnum`` stored as its value in a VARCHAR column (no database enum type)."""

    impl = AutoString
    cache_ok = True

    def __init__(self, enum: type[E], length: int | None = None) -> None:
        super().__init__(length=length)
        self.enum = enum

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        try:
            return self.enum(value).value
        except ValueError:
            raise ValueError(f"{value!r} is not a {self.enum.__name__}; one of "
                             f"{[m.value for m in self.enum]}") from None

    def process_result_value(self, value: Any, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


class ModelJSON(TypeDecorator[M], Generic[M]):
    """A pydantic model stored as its JSON in a JSON column."""

    impl = JSON
    cache_ok = True

    def __init__(self, model: type[M]) -> None:
        super().__init__()
        self.model = model

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, self.model):
            value = self.model.model_validate(value)
        return value.model_dump(mode="json")

    def process_result_value(self, value: Any, dialect: Dialect) -> M | None:
        return None if value is None else self.model.model_validate(value)


def enum_field(enum: type[E], default: E | None = None, *, length: int | None = None,
               index: bool = False, nullable: bool = False) -> Any:
    """A SQLModel field holding a member of ``enum`` (``default``: none, the field is required)."""
    column: Column[Any] = Column(StrEnumType(enum, length), nullable=nullable, index=index)
    if default is None and not nullable:
        return Field(sa_column=column)
    return Field(default=default, sa_column=column)


def model_field(model: type[M], *, default_factory: Any = None, nullable: bool = False) -> Any:
    """A SQLModel field holding a ``model`` as JSON."""
    column: Column[Any] = Column(ModelJSON(model), nullable=nullable)
    if default_factory is None:
        return Field(sa_column=column)
    return Field(default_factory=default_factory, sa_column=column)
