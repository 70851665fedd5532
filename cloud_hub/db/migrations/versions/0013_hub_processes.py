"""The hub processes sharing the database, each as it last reported itself (``hub_processes``;
``GET /api/v1/hubs``).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hub_processes',
    sa.Column('holder', AutoString(length=128), nullable=False),
    sa.Column('client_id', AutoString(length=64), nullable=False),
    sa.Column('host', AutoString(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('version', AutoString(length=32), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('seen_at', sa.Float(), nullable=False),
    sa.Column('stopped_at', sa.Float(), nullable=True),
    sa.Column('report_s', sa.Float(), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('holder')
    )
    op.create_index(op.f('ix_hub_processes_seen_at'), 'hub_processes', ['seen_at'], unique=False)


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
