"""Telemetry keys in a table of their own, and the telemetry table keyed (device_id, ts_first,
epoch, seq): on PostgreSQL range-partitioned by ts_first, one partition per day, dropped whole
by retention (issue 15).

- ``telemetry_keys`` (device_id, epoch, seq, readings, ts_first, ts_last) is filled from the
  rows stored: the deduplication key and fingerprint of every batch.
- SQLite: the telemetry table is rebuilt with the new key (a copy of its rows).
- PostgreSQL: the table becomes the partition ``telemetry_legacy`` of a new partitioned
  ``telemetry``, for every ts_first below the start of tomorrow (UTC), with no copy of its rows
  (rows at or above it, from devices whose clocks run ahead, move to the new default
  partition); an empty one is dropped instead. The day partitions from tomorrow on are made at
  start-up and by the maintenance job (:mod:`cloud_hub.db.partitions`).
- ``ix_telemetry_device_ts`` goes: the new primary key starts with (device_id, ts_first).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = ("device_id", "epoch", "seq", "channels", "readings", "ts_first", "ts_last",
            "ts_blob", "values_blob", "stored_at")
_KEY_COLUMNS = ("device_id", "epoch", "seq", "readings", "ts_first", "ts_last")
# cloud_hub.db.tables.TELEMETRY_LZ4 as of this revision, for the new parent table.
_LZ4 = """DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
             AND 'lz4' = ANY(enumvals)) THEN
    ALTER TABLE telemetry ALTER COLUMN ts_blob SET COMPRESSION lz4,
                          ALTER COLUMN values_blob SET COMPRESSION lz4;
  END IF;
END $$"""


def _telemetry(name: str, **kwargs: Any) -> None:
    op.create_table(
        name,
        sa.Column("device_id", AutoString(length=64), nullable=False),
        sa.Column("epoch", AutoString(length=16), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("ts_first", sa.Float(), nullable=False),
        sa.Column("ts_last", sa.Float(), nullable=False),
        sa.Column("ts_blob", sa.LargeBinary(), nullable=False),
        sa.Column("values_blob", sa.LargeBinary(), nullable=False),
        sa.Column("stored_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "ts_first", "epoch", "seq",
                                name="telemetry_pkey" if name == "telemetry" else None),
        **kwargs,
    )


def upgrade() -> None:
    op.create_table(
        "telemetry_keys",
        sa.Column("device_id", AutoString(length=64), nullable=False),
        sa.Column("epoch", AutoString(length=16), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("ts_first", sa.Float(), nullable=False),
        sa.Column("ts_last", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "epoch", "seq"),
        sqlite_with_rowid=False,
    )
    keys = ", ".join(_KEY_COLUMNS)
    op.execute(f"INSERT INTO telemetry_keys ({keys}) SELECT {keys} FROM telemetry")
    op.drop_index("ix_telemetry_device_ts", table_name="telemetry")
    if op.get_bind().dialect.name == "postgresql":
        _partition_postgresql()
    else:
        _rebuild_sqlite()


def _rebuild_sqlite() -> None:
    columns = ", ".join(_COLUMNS)
    _telemetry("telemetry_rekeyed")
    op.execute(f"INSERT INTO telemetry_rekeyed ({columns}) SELECT {columns} FROM telemetry")
    op.drop_index("ix_telemetry_stored_at", table_name="telemetry")
    op.drop_table("telemetry")
    op.rename_table("telemetry_rekeyed", "telemetry")
    op.create_index("ix_telemetry_stored_at", "telemetry", ["stored_at"], unique=False)


def _partition_postgresql() -> None:
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    cut = dt.datetime.combine(tomorrow, dt.time(), tzinfo=dt.UTC).timestamp()
    columns = ", ".join(_COLUMNS)
    bind = op.get_bind()
    primary_key = bind.execute(sa.text(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass('telemetry') "
        "AND contype = 'p'")).scalar_one()  # its name depends on the revision that made it
    op.execute("ALTER TABLE telemetry RENAME TO telemetry_legacy")
    op.execute(f'ALTER TABLE telemetry_legacy DROP CONSTRAINT "{primary_key}"')
    op.execute("ALTER INDEX ix_telemetry_stored_at RENAME TO telemetry_legacy_stored_at_idx")
    _telemetry("telemetry", postgresql_partition_by="RANGE (ts_first)")
    op.create_index("ix_telemetry_stored_at", "telemetry", ["stored_at"], unique=False)
    op.execute(_LZ4)
    op.execute("CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT")
    op.execute(f"WITH moved AS (DELETE FROM telemetry_legacy WHERE ts_first >= {cut!r} "
               f"RETURNING {columns}) INSERT INTO telemetry ({columns}) SELECT * FROM moved")
    if bind.execute(sa.text("SELECT 1 FROM telemetry_legacy LIMIT 1")).first():
        op.execute("ALTER TABLE telemetry ATTACH PARTITION telemetry_legacy "
                   f"FOR VALUES FROM (MINVALUE) TO ({cut!r})")
    else:
        op.execute("DROP TABLE telemetry_legacy")


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
