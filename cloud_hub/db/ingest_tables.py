"""The telemetry and anomaly tables as ingest writes them: plain column types, statements built
once.

The SQLModel tables (:mod:`cloud_hub.db.tables`) declare ``channels`` as JSON, which makes
SQLAlchemy run ``json.dumps`` on every row; ingest passes the JSON text itself (one encoding
per distinct channel list, cached) through these mirrors of the same tables. Their column names
and the table names are checked against the SQLModel tables at import.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import BigInteger, Column, Float, Integer, LargeBinary, MetaData, String, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import NullType, TypeDecorator

from cloud_hub.db.tables import Anomaly, TelemetryBatchRow

__all__ = ["anomalies", "channels_json", "insert_new", "telemetry"]

_metadata = MetaData()


class _JsonText(TypeDecorator[str]):
    """JSON text passed through as it is: no ``json.dumps`` per row, and no cast to VARCHAR
    (PostgreSQL takes an untyped literal into a json column, not a varchar)."""

    impl = NullType
    cache_ok = True

telemetry = Table(
    TelemetryBatchRow.__tablename__, _metadata,
    Column("device_id", String, primary_key=True), Column("epoch", String, primary_key=True),
    Column("seq", BigInteger, primary_key=True), Column("channels", _JsonText()),
    Column("readings", Integer), Column("ts_first", Float), Column("ts_last", Float),
    Column("ts_blob", LargeBinary), Column("values_blob", LargeBinary),
    Column("stored_at", Float),
)

anomalies = Table(
    Anomaly.__tablename__, _metadata,
    Column("device_id", String, primary_key=True), Column("epoch", String, primary_key=True),
    Column("seq", BigInteger, primary_key=True), Column("ts_start", Float),
    Column("ts_end", Float), Column("score", Float), Column("threshold", Float),
    Column("model_name", String), Column("model_version", Integer),
    Column("channels", _JsonText()),
    Column("detected_at", Float), Column("stored_at", Float),
)


def _check_mirror(mirror: Table, model: Any) -> None:
    real = {c.name for c in model.__table__.columns}
    missing = {c.name for c in mirror.columns} - real
    if missing:  # a renamed column must be renamed here too
        raise RuntimeError(f"ingest's {mirror.name} names columns the table lacks: {missing}")


_check_mirror(telemetry, TelemetryBatchRow)
_check_mirror(anomalies, Anomaly)


@functools.lru_cache(maxsize=4096)
def _channels_json(channels: tuple[str, ...]) -> str:
    return msgspec.json.encode(list(channels)).decode()


def channels_json(channels: Sequence[str]) -> str:
    """The JSON text of a channel list (as the JSON column stores it)."""
    return _channels_json(tuple(channels))


@functools.cache
def insert_new(dialect: str, table: Table) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING`` the key of each row stored."""
    insert: Any = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    return insert.on_conflict_do_nothing().returning(table.c.device_id, table.c.epoch,
                                                     table.c.seq)
