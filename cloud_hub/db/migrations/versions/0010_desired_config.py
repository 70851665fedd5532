"""The config each device's ``desired`` carried: the hub sends a device's desired again when it
picks another variant of the same version for it (its first status named its runtime after the
desired was set, issue 12), and the config must go with it unchanged.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('devices', sa.Column('desired_config', sa.JSON(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
