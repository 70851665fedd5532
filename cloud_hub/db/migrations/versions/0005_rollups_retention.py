"""Telemetry rollups (1 minute, 1 hour) and the maintenance job's marks; telemetry indexed by
the time it was stored (rollups fold in that order, retention deletes the oldest); stream marks
remember what retention deleted (issue 15).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('maintenance_marks',
    sa.Column('name', AutoString(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('key', AutoString(length=256), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('telemetry_rollups',
    sa.Column('device_id', AutoString(length=64), nullable=False),
    sa.Column('resolution', AutoString(length=4), nullable=False),
    sa.Column('bucket', sa.Float(), nullable=False),
    sa.Column('channel', AutoString(length=64), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('sum', sa.Float(), nullable=False),
    sa.Column('min', sa.Float(), nullable=False),
    sa.Column('max', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'resolution', 'bucket', 'channel')
    )
    op.create_index('ix_rollups_bucket', 'telemetry_rollups', ['bucket'], unique=False)
    op.create_index('ix_telemetry_stored_at', 'telemetry', ['stored_at'], unique=False)
    with op.batch_alter_table('stream_marks') as batch:
        batch.add_column(sa.Column('pruned_through', sa.BigInteger(), nullable=False,
                                   server_default=sa.text('-1')))


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
