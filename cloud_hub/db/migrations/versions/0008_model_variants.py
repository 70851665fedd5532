"""Variants of a model version (issue 12): the other quantizations that passed the parity gate,
each with its own signed manifest; which variant each device was sent and why, which one it
reports running, and the variant of each rollout member.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_variants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("quantization", AutoString(length=16), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", AutoString(), nullable=False),
        sa.Column("parity", sa.JSON(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("tflite", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "quantization",
                            name="uq_model_variants_model_quantization"),
    )
    op.create_index(op.f("ix_model_variants_model_id"), "model_variants", ["model_id"])
    op.add_column("devices", sa.Column("desired_variant", AutoString(length=16), nullable=True))
    op.add_column("devices", sa.Column("desired_variant_reason", AutoString(), nullable=True))
    op.add_column("devices", sa.Column("active_variant", AutoString(length=16), nullable=True))
    op.add_column("rollout_devices", sa.Column("variant", AutoString(length=16), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
