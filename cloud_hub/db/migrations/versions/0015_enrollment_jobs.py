"""Bulk enrollment jobs in the database (``enrollment_jobs``), so that any hub process behind a
balancer answers for them; their bundles are kept sealed with a key only the caller holds.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('enrollment_jobs',
    sa.Column('id', AutoString(length=32), nullable=False),
    sa.Column('holder', AutoString(length=128), nullable=False),
    sa.Column('status', AutoString(length=16), nullable=False),
    sa.Column('stage', AutoString(length=32), nullable=False),
    sa.Column('devices_total', sa.Integer(), nullable=False),
    sa.Column('devices_done', sa.Integer(), nullable=False),
    sa.Column('device_ids', sa.JSON(), nullable=False),
    sa.Column('error', AutoString(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('bundles_collected', sa.Boolean(), nullable=False),
    sa.Column('sealed', sa.LargeBinary(), nullable=True),
    sa.Column('sealed_until', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_enrollment_jobs_created_at'), 'enrollment_jobs', ['created_at'],
                    unique=False)


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
