"""Device enrollment (issue 10): the hub's registry of enrolled devices.

Devices a database already knows are not enrolled by this migration: on the secure broker
each needs its own credential, which only ``cloud-hub devices enroll`` hands out.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "enrollments" in sa.inspect(op.get_bind()).get_table_names():
        return  # made by create_all before this migration existed
    op.create_table('enrollments',
    sa.Column('device_id', AutoString(length=64), nullable=False),
    sa.Column('enrolled_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.Column('broker_credential', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('device_id')
    )
    op.create_index(op.f('ix_enrollments_revoked_at'), 'enrollments', ['revoked_at'], unique=False)


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
