"""Uploaded training data in the database (``training_uploads``), so that whichever hub
process sharing it runs the job reads it; until now it was a file in the data directory of the
process that took the upload. Jobs queued before this revision still read their files there.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('training_uploads',
    sa.Column('name', AutoString(length=64), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_index(op.f('ix_training_uploads_job_id'), 'training_uploads', ['job_id'],
                    unique=False)


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
