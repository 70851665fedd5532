"""Pages of ``devices`` and ``stream_marks`` kept 70% free on PostgreSQL (fillfactor 30), so
that the updates every ingest transaction makes to them stay on their page (HOT updates, no new
index entry; see cloud_hub.db.tables.HOT_FILLFACTOR). The setting applies to pages written from
now on; a table's existing pages keep theirs until it is rewritten (``VACUUM FULL``, which
locks it). Nothing to do on SQLite.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# cloud_hub.db.tables.HOT_FILLFACTOR as of this revision (a migration keeps its own copy).
_FILLFACTOR = 30


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("devices", "stream_marks"):
            op.execute(f"ALTER TABLE {table} SET (fillfactor = {_FILLFACTOR})")


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
