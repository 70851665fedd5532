"""Drift monitoring and the retraining loop (issue 13): drift summaries, each device's latest
drift state, retrain policies per device group and retrain runs with their steps.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "drift_summaries" in sa.inspect(op.get_bind()).get_table_names():
        return  # made by create_all before this migration existed
    op.create_table('device_drift',
    sa.Column('device_id', AutoString(length=64), nullable=False),
    sa.Column('state', AutoString(length=16), nullable=False),
    sa.Column('since', sa.Float(), nullable=True),
    sa.Column('drifting', sa.JSON(), nullable=False),
    sa.Column('model_name', AutoString(length=64), nullable=True),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('windows', sa.Integer(), nullable=False),
    sa.Column('anomalies', sa.Integer(), nullable=False),
    sa.Column('baseline_windows', sa.Integer(), nullable=False),
    sa.Column('baseline_anomalies', sa.Integer(), nullable=False),
    sa.Column('detections', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.Float(), nullable=False),
    sa.Column('period_end', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id')
    )
    op.create_table('drift_summaries',
    sa.Column('device_id', AutoString(length=64), nullable=False),
    sa.Column('epoch', AutoString(length=16), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('period_start', sa.Float(), nullable=False),
    sa.Column('period_end', sa.Float(), nullable=False),
    sa.Column('state', AutoString(length=16), nullable=False),
    sa.Column('since', sa.Float(), nullable=True),
    sa.Column('drifting', sa.JSON(), nullable=False),
    sa.Column('model_name', AutoString(length=64), nullable=True),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('readings', sa.Integer(), nullable=False),
    sa.Column('windows', sa.Integer(), nullable=False),
    sa.Column('anomalies', sa.Integer(), nullable=False),
    sa.Column('baseline_windows', sa.Integer(), nullable=False),
    sa.Column('baseline_anomalies', sa.Integer(), nullable=False),
    sa.Column('detections', sa.Integer(), nullable=False),
    sa.Column('channels', sa.JSON(), nullable=False),
    sa.Column('score', sa.JSON(), nullable=True),
    sa.Column('training', sa.JSON(), nullable=True),
    sa.Column('has_training', sa.Boolean(), nullable=False),
    sa.Column('stored_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'epoch', 'seq')
    )
    with op.batch_alter_table('drift_summaries', schema=None) as batch_op:
        batch_op.create_index('ix_drift_summaries_device_end', ['device_id', 'period_end'], unique=False)
        batch_op.create_index(batch_op.f('ix_drift_summaries_has_training'), ['has_training'], unique=False)
        batch_op.create_index(batch_op.f('ix_drift_summaries_stored_at'), ['stored_at'], unique=False)

    op.create_table('retrain_policies',
    sa.Column('group', AutoString(length=64), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('drift_hold_s', sa.Float(), nullable=False),
    sa.Column('max_anomaly_rate_ratio', sa.Float(), nullable=True),
    sa.Column('min_anomaly_windows', sa.Integer(), nullable=False),
    sa.Column('scope', AutoString(length=16), nullable=False),
    sa.Column('source', AutoString(length=16), nullable=False),
    sa.Column('recent_s', sa.Float(), nullable=False),
    sa.Column('cooldown_s', sa.Float(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('rollout', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('group')
    )
    op.create_table('retrain_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('group', AutoString(length=64), nullable=False),
    sa.Column('trigger', AutoString(length=16), nullable=False),
    sa.Column('reason', AutoString(), nullable=False),
    sa.Column('devices', sa.JSON(), nullable=False),
    sa.Column('model_name', AutoString(length=64), nullable=False),
    sa.Column('state', AutoString(length=16), nullable=False),
    sa.Column('training_job_id', sa.Integer(), nullable=True),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('source', AutoString(length=16), nullable=False),
    sa.Column('since', sa.Float(), nullable=True),
    sa.Column('until', sa.Float(), nullable=True),
    sa.Column('steps', sa.JSON(), nullable=False),
    sa.Column('requested_by', AutoString(length=64), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('retrain_runs', schema=None) as batch_op:
        batch_op.create_index('ix_retrain_runs_state', ['state'], unique=False)


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
