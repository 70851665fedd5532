"""From 98792cc to issue 15's start: stream epochs, delivery marks, incidents and webhooks,
releases and signing keys, leases, console sessions, device conflicts.

Telemetry and anomaly rows were keyed (device_id, seq); they are now keyed (device_id, epoch,
seq) with a BIGINT seq. Rows stored before epochs existed get ``{LEGACY_EPOCH}``, which can
never collide with a device's epoch (16 lowercase hex digits). Every step looks first: a database
that ``create_all`` made at some point between the two schemas is brought to the same end.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LEGACY_EPOCH = "legacy0000000000"  # not hex: no device epoch can equal it


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def _has_table(name: str) -> bool:
    return name in _inspector().get_table_names()


def _has_index(table: str, name: str) -> bool:
    return any(i["name"] == name for i in _inspector().get_indexes(table))


def _columns(table: str) -> set[str]:
    return {c["name"] for c in _inspector().get_columns(table)}


def _rekey(table: str, columns: list[sa.Column[Any]], indexes: list[tuple[str, list[str]]]) -> None:
    """Rebuild ``table`` keyed (device_id, epoch, seq): copy its rows under the legacy epoch."""
    old = f"{table}_before_epochs"
    for index in _inspector().get_indexes(table):
        if index["name"]:
            op.drop_index(index["name"], table_name=table)
    op.rename_table(table, old)
    op.create_table(table, *columns, sa.PrimaryKeyConstraint("device_id", "epoch", "seq"))
    for name, cols in indexes:
        op.create_index(name, table, cols, unique=False)
    names = [c.name for c in columns if c.name not in ("epoch", "incident_id")]
    listed = ", ".join(f'"{n}"' for n in names)
    op.execute(sa.text(f'INSERT INTO "{table}" ({listed}, "epoch") '
                       f'SELECT {listed}, :epoch FROM "{old}"').bindparams(epoch=LEGACY_EPOCH))
    op.drop_table(old)


def _epoch_key() -> list[sa.Column[Any]]:
    return [
        sa.Column("device_id", AutoString(length=64), nullable=False),
        sa.Column("epoch", AutoString(length=16), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    if not _has_table('device_conflicts'):
        op.create_table('device_conflicts',
        sa.Column('device_id', AutoString(length=64), nullable=False),
        sa.Column('kind', AutoString(length=16), nullable=False),
        sa.Column('detail', AutoString(), nullable=False),
        sa.Column('epochs', sa.JSON(), nullable=False),
        sa.Column('first_at', sa.Float(), nullable=False),
        sa.Column('last_at', sa.Float(), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('device_id')
        )
    if not _has_table('incidents'):
        op.create_table('incidents',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('device_id', AutoString(length=64), nullable=False),
        sa.Column('state', AutoString(), nullable=False),
        sa.Column('started_at', sa.Float(), nullable=False),
        sa.Column('ended_at', sa.Float(), nullable=False),
        sa.Column('opened_at', sa.Float(), nullable=False),
        sa.Column('last_event_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('events', sa.Integer(), nullable=False),
        sa.Column('peak_score', sa.Float(), nullable=False),
        sa.Column('peak_threshold', sa.Float(), nullable=False),
        sa.Column('channel_counts', sa.JSON(), nullable=False),
        sa.Column('model_name', AutoString(), nullable=False),
        sa.Column('model_version', sa.Integer(), nullable=False),
        sa.Column('fault_class', AutoString(length=64), nullable=True),
        sa.Column('rul_s', sa.Float(), nullable=True),
        sa.Column('acknowledged_by', AutoString(), nullable=True),
        sa.Column('acknowledged_at', sa.Float(), nullable=True),
        sa.Column('ack_note', AutoString(length=2000), nullable=True),
        sa.Column('resolved_by', AutoString(), nullable=True),
        sa.Column('resolved_at', sa.Float(), nullable=True),
        sa.Column('resolve_note', AutoString(length=2000), nullable=True),
        sa.PrimaryKeyConstraint('id')
        )
    if not _has_index('incidents', 'ix_incidents_device_state'):
        op.create_index('ix_incidents_device_state', 'incidents', ['device_id', 'state'], unique=False)
    if not _has_index('incidents', 'ix_incidents_state'):
        op.create_index(op.f('ix_incidents_state'), 'incidents', ['state'], unique=False)
    if not _has_index('incidents', 'ix_incidents_updated'):
        op.create_index('ix_incidents_updated', 'incidents', ['updated_at'], unique=False)
    if not _has_table('job_leases'):
        op.create_table('job_leases',
        sa.Column('name', AutoString(length=64), nullable=False),
        sa.Column('holder', AutoString(length=128), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('name')
        )
    if not _has_table('model_releases'):
        op.create_table('model_releases',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', AutoString(length=64), nullable=False),
        sa.Column('release', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('key_id', AutoString(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('reason', AutoString(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name', 'release', name='uq_model_releases_name_release')
        )
    if not _has_index('model_releases', 'ix_model_releases_name'):
        op.create_index(op.f('ix_model_releases_name'), 'model_releases', ['name'], unique=False)
    if not _has_table('signing_keys'):
        op.create_table('signing_keys',
        sa.Column('key_id', AutoString(length=16), nullable=False),
        sa.Column('public_key', AutoString(), nullable=False),
        sa.Column('status', AutoString(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('activated_at', sa.Float(), nullable=True),
        sa.Column('retire_after', sa.Float(), nullable=True),
        sa.Column('retired_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('key_id')
        )
    if not _has_table('stream_marks'):
        op.create_table('stream_marks',
        sa.Column('device_id', AutoString(length=64), nullable=False),
        sa.Column('epoch', AutoString(length=16), nullable=False),
        sa.Column('stream', AutoString(length=16), nullable=False),
        sa.Column('floor', sa.BigInteger(), nullable=False),
        sa.Column('watermark', sa.BigInteger(), nullable=False),
        sa.Column('top', sa.BigInteger(), nullable=False),
        sa.Column('first_seen', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('device_id', 'epoch', 'stream')
        )
    if not _has_table('trust_lists'):
        op.create_table('trust_lists',
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('reason', AutoString(), nullable=False),
        sa.Column('published_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('version')
        )
    if not _has_table('webhook_rules'):
        op.create_table('webhook_rules',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', AutoString(length=64), nullable=False),
        sa.Column('url', AutoString(length=2000), nullable=False),
        sa.Column('secret', AutoString(length=128), nullable=False),
        sa.Column('group', AutoString(length=64), nullable=True),
        sa.Column('tag', AutoString(length=64), nullable=True),
        sa.Column('min_score', sa.Float(), nullable=True),
        sa.Column('fault_class', AutoString(length=64), nullable=True),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id')
        )
    if not _has_table('ui_sessions'):
        op.create_table('ui_sessions',
        sa.Column('token_hash', AutoString(length=64), nullable=False),
        sa.Column('api_key_id', sa.Integer(), nullable=False),
        sa.Column('csrf_token', AutoString(length=64), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], ),
        sa.PrimaryKeyConstraint('token_hash')
        )
    if not _has_index('ui_sessions', 'ix_ui_sessions_api_key_id'):
        op.create_index(op.f('ix_ui_sessions_api_key_id'), 'ui_sessions', ['api_key_id'], unique=False)
    if not _has_table('webhook_deliveries'):
        op.create_table('webhook_deliveries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('rule_id', sa.Integer(), nullable=False),
        sa.Column('incident_id', sa.Integer(), nullable=False),
        sa.Column('event', AutoString(), nullable=False),
        sa.Column('body', AutoString(), nullable=False),
        sa.Column('status', AutoString(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.Float(), nullable=False),
        sa.Column('last_error', AutoString(length=2000), nullable=True),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('delivered_at', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], ),
        sa.ForeignKeyConstraint(['rule_id'], ['webhook_rules.id'], ),
        sa.PrimaryKeyConstraint('id')
        )
    if not _has_index('webhook_deliveries', 'ix_deliveries_due'):
        op.create_index('ix_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'], unique=False)
    if not _has_index('webhook_deliveries', 'ix_deliveries_rule_incident'):
        op.create_index('ix_deliveries_rule_incident', 'webhook_deliveries', ['rule_id', 'incident_id'], unique=False)
    if "epoch" not in _columns("telemetry"):
        _rekey("telemetry", [
            *_epoch_key(),
            sa.Column("channels", sa.JSON(), nullable=False),
            sa.Column("readings", sa.Integer(), nullable=False),
            sa.Column("ts_first", sa.Float(), nullable=False),
            sa.Column("ts_last", sa.Float(), nullable=False),
            sa.Column("ts_blob", sa.LargeBinary(), nullable=False),
            sa.Column("values_blob", sa.LargeBinary(), nullable=False),
            sa.Column("stored_at", sa.Float(), nullable=False),
        ], [("ix_telemetry_device_ts", ["device_id", "ts_first"])])
    if "epoch" not in _columns("anomalies"):
        _rekey("anomalies", [
            *_epoch_key(),
            sa.Column("ts_start", sa.Float(), nullable=False),
            sa.Column("ts_end", sa.Float(), nullable=False),
            sa.Column("score", sa.Float(), nullable=False),
            sa.Column("threshold", sa.Float(), nullable=False),
            sa.Column("model_name", AutoString(), nullable=False),
            sa.Column("model_version", sa.Integer(), nullable=False),
            sa.Column("channels", sa.JSON(), nullable=False),
            sa.Column("detected_at", sa.Float(), nullable=False),
            sa.Column("stored_at", sa.Float(), nullable=False),
            sa.Column("incident_id", sa.Integer(), nullable=True),
        ], [("ix_anomalies_device_ts", ["device_id", "ts_start"]),
            ("ix_anomalies_stored_at", ["stored_at"]),
            ("ix_anomalies_incident_id", ["incident_id"])])
    if "incident_id" not in _columns("anomalies"):
        op.add_column("anomalies", sa.Column("incident_id", sa.Integer(), nullable=True))
    if not _has_index("anomalies", "ix_anomalies_incident_id"):
        op.create_index("ix_anomalies_incident_id", "anomalies", ["incident_id"], unique=False)


def downgrade() -> None:
    raise NotImplementedError("the hub's migrations go forward only")
