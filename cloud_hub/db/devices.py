"""Device rows created on first sight, safely when several writers see a device at once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from cloud_hub.db.tables import Device

__all__ = ["ensure_devices", "insert_ignoring_conflicts", "insert_ignoring_conflicts_on"]


def insert_ignoring_conflicts(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT that skips rows whose key exists (SQLite and PostgreSQL)."""
    insert_ignoring_conflicts_on(session.connection(), table, rows)


def insert_ignoring_conflicts_on(conn: Connection, table: Table,
                                 rows: list[dict[str, Any]]) -> None:
    """:func:`insert_ignoring_conflicts` on a Core connection."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "sqlite":
        stmt: Any = sqlite.insert(table).on_conflict_do_nothing()
    elif dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    else:  # other databases: callers check for existing keys first
        stmt = table.insert()
    conn.execute(stmt, rows)


def ensure_devices(session: Session, device_ids: list[str] | set[str]) -> dict[str, Device]:
    """The rows of these devices, creating missing ones (in the session's transaction)."""
    wanted = sorted(set(device_ids))
    found: dict[str, Device] = {}
    for i in range(0, len(wanted), 500):
        part = wanted[i : i + 500]
        found.update((d.device_id, d) for d in session.exec(
            select(Device).where(col(Device.device_id).in_(part))))
    missing = [d for d in wanted if d not in found]
    if missing:
        table: Table = Device.__table__  # type: ignore[attr-defined]
        insert_ignoring_conflicts(session, table, [{"device_id": d, "tags": []} for d in missing])
        for i in range(0, len(missing), 500):
            part = missing[i : i + 500]
            found.update((d.device_id, d) for d in session.exec(
                select(Device).where(col(Device.device_id).in_(part))))
    return found
