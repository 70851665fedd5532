"""The hub's schema at commit 98792cc (before issue 15): what create_all made until then.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('anomalies',
    sa.Column('device_id', AutoString(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('ts_start', sa.Float(), nullable=False),
    sa.Column('ts_end', sa.Float(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('model_name', AutoString(), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('channels', sa.JSON(), nullable=False),
    sa.Column('detected_at', sa.Float(), nullable=False),
    sa.Column('stored_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'seq')
    )
    op.create_index('ix_anomalies_device_ts', 'anomalies', ['device_id', 'ts_start'], unique=False)
    op.create_index(op.f('ix_anomalies_stored_at'), 'anomalies', ['stored_at'], unique=False)
    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', AutoString(length=64), nullable=False),
    sa.Column('key_hash', AutoString(length=64), nullable=False),
    sa.Column('prefix', AutoString(length=12), nullable=False),
    sa.Column('scope', AutoString(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_api_keys_key_hash'), 'api_keys', ['key_hash'], unique=True)
    op.create_table('dead_letters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('topic', AutoString(), nullable=False),
    sa.Column('reason', AutoString(), nullable=False),
    sa.Column('payload_preview', AutoString(), nullable=False),
    sa.Column('payload_size', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_dead_letters_received_at'), 'dead_letters', ['received_at'], unique=False)
    op.create_table('devices',
    sa.Column('device_id', AutoString(length=64), nullable=False),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('status_at', sa.Float(), nullable=True),
    sa.Column('last_seen', sa.Float(), nullable=True),
    sa.Column('agent_version', AutoString(), nullable=False),
    sa.Column('group', AutoString(length=64), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('desired_name', AutoString(), nullable=True),
    sa.Column('desired_version', sa.Integer(), nullable=True),
    sa.Column('desired_at', sa.Float(), nullable=True),
    sa.Column('reported_name', AutoString(), nullable=True),
    sa.Column('reported_version', sa.Integer(), nullable=True),
    sa.Column('reported_state', AutoString(), nullable=True),
    sa.Column('reported_error', AutoString(), nullable=True),
    sa.Column('reported_since', sa.Float(), nullable=True),
    sa.Column('active_name', AutoString(), nullable=True),
    sa.Column('active_version', sa.Integer(), nullable=True),
    sa.Column('active_sha256', AutoString(), nullable=True),
    sa.Column('heartbeat', sa.JSON(), nullable=True),
    sa.Column('telemetry_readings', sa.Integer(), nullable=False),
    sa.Column('telemetry_batches', sa.Integer(), nullable=False),
    sa.Column('anomalies', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('device_id')
    )
    op.create_index(op.f('ix_devices_group'), 'devices', ['group'], unique=False)
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', AutoString(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', AutoString(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('published_at', sa.Float(), nullable=True),
    sa.Column('retired_at', sa.Float(), nullable=True),
    sa.Column('family', AutoString(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('channels', sa.JSON(), nullable=False),
    sa.Column('training', sa.JSON(), nullable=False),
    sa.Column('normalization', sa.JSON(), nullable=False),
    sa.Column('input', sa.JSON(), nullable=False),
    sa.Column('score', sa.JSON(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('threshold_method', AutoString(), nullable=False),
    sa.Column('quantization', AutoString(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('float_size_bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', AutoString(), nullable=False),
    sa.Column('parity', sa.JSON(), nullable=False),
    sa.Column('parity_passed', sa.Boolean(), nullable=False),
    sa.Column('parity_failure', AutoString(), nullable=True),
    sa.Column('validation', sa.JSON(), nullable=False),
    sa.Column('extra', sa.JSON(), nullable=False),
    sa.Column('key_id', AutoString(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('tflite', sa.LargeBinary(), nullable=False),
    sa.Column('training_job_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_models_name_version')
    )
    op.create_index(op.f('ix_models_name'), 'models', ['name'], unique=False)
    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', AutoString(), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('status', AutoString(), nullable=False),
    sa.Column('target', sa.JSON(), nullable=False),
    sa.Column('policy', sa.JSON(), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('stages', sa.JSON(), nullable=False),
    sa.Column('stage_started_at', sa.Float(), nullable=True),
    sa.Column('reason', AutoString(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('seconds_to_full', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('telemetry',
    sa.Column('device_id', AutoString(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('channels', sa.JSON(), nullable=False),
    sa.Column('readings', sa.Integer(), nullable=False),
    sa.Column('ts_first', sa.Float(), nullable=False),
    sa.Column('ts_last', sa.Float(), nullable=False),
    sa.Column('ts_blob', sa.LargeBinary(), nullable=False),
    sa.Column('values_blob', sa.LargeBinary(), nullable=False),
    sa.Column('stored_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'seq')
    )
    op.create_index('ix_telemetry_device_ts', 'telemetry', ['device_id', 'ts_first'], unique=False)
    op.create_table('training_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', AutoString(length=64), nullable=False),
    sa.Column('status', AutoString(), nullable=False),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('progress', sa.JSON(), nullable=False),
    sa.Column('error', AutoString(), nullable=True),
    sa.Column('model_name', AutoString(), nullable=True),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('rollout_devices',
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('device_id', AutoString(length=64), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('previous_name', AutoString(), nullable=True),
    sa.Column('previous_version', sa.Integer(), nullable=True),
    sa.Column('desired_at', sa.Float(), nullable=True),
    sa.Column('confirmed_at', sa.Float(), nullable=True),
    sa.Column('failed_at', sa.Float(), nullable=True),
    sa.Column('failure', AutoString(), nullable=True),
    sa.Column('reverted_at', sa.Float(), nullable=True),
    sa.Column('revert_confirmed_at', sa.Float(), nullable=True),
    sa.Column('baseline_rate', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('rollout_id', 'device_id')
    )


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
