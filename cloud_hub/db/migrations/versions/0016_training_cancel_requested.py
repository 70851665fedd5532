"""A training job asked to stop through a process other than the one running it
(``training_jobs.cancel_requested_at``), which that process polls.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('training_jobs', sa.Column('cancel_requested_at', sa.Float(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
