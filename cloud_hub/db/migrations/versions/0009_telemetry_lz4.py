"""Telemetry blobs compressed with lz4 on PostgreSQL (issue 15), where the server has it: pglz
cost about half of each insert of a 100-reading batch. Rows already stored keep pglz.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The statement of cloud_hub.db.tables.TELEMETRY_LZ4 as of this revision (a migration keeps
# its own copy: the table module may change later).
_LZ4 = """DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
             AND 'lz4' = ANY(enumvals)) THEN
    ALTER TABLE telemetry ALTER COLUMN ts_blob SET COMPRESSION lz4,
                          ALTER COLUMN values_blob SET COMPRESSION lz4;
  END IF;
END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_LZ4)


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
