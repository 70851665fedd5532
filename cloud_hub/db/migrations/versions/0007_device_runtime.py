"""Each device's TFLite runtime as its status reports it (package, version, whether XNNPACK
runs int8 graphs there): what the choice between the int8 and float32 variants of a model
needs (issue 12).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('devices', sa.Column('runtime', sa.JSON(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
