"""Tables fed by MQTT ingest (devices, telemetry, anomalies, dead letters) and API keys.

Telemetry is stored one row per batch, with the readings packed as little-endian float64
arrays: a batch of 100 readings is one insert instead of 100. The deduplication key of the wire
protocol, (device_id, epoch, seq), is the primary key of :class:`TelemetryKey`, one narrow row
per batch stored; the batch's own row (:class:`TelemetryBatchRow`) is keyed (device_id,
ts_first, epoch, seq), so that on PostgreSQL it can live in day partitions of ``ts_first``
(:mod:`cloud_hub.db.partitions`), whose unique keys must hold the partition key.
:class:`StreamMark` holds, per device, epoch and stream, what the hub acknowledges to the device
(see :mod:`cloud_hub.db.marks`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Column,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    event,
)
from sqlmodel import Field, SQLModel

from cloud_hub.core.security import Scope
from cloud_hub.core.states import ConflictKind
from cloud_hub.db.types import enum_field
from shared.messages import ModelState

__all__ = ["Anomaly", "ApiKey", "DeadLetter", "Device", "DeviceConflict", "StreamMark",
           "TelemetryBatchRow", "TelemetryKey"]

EPOCH_LENGTH = 16


class Device(SQLModel, table=True):
    __tablename__ = "devices"

    device_id: str = Field(primary_key=True, max_length=64)
    online: bool = False
    status_at: float | None = None
    last_seen: float | None = None
    agent_version: str = ""
    group: str | None = Field(default=None, max_length=64, index=True)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    desired_name: str | None = None
    desired_version: int | None = None
    desired_at: float | None = None
    # the config the desired carried (sent again with it when the variant is picked again)
    desired_config: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # The variant (quantization) of the desired version it was sent, and why (issue 12).
    desired_variant: str | None = Field(default=None, max_length=16)
    desired_variant_reason: str | None = None
    # What `reported` says: the model the state is about, the state, and the active model.
    reported_name: str | None = None
    reported_version: int | None = None
    reported_state: ModelState | None = enum_field(ModelState, nullable=True)
    reported_error: str | None = None
    reported_since: float | None = None
    active_name: str | None = None
    active_version: int | None = None
    active_sha256: str | None = None
    active_variant: str | None = Field(default=None, max_length=16)  # as reported
    heartbeat: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # The TFLite runtime its status last reported (shared.messages.AgentRuntime as a dict);
    # None for agents that do not report it, or before their first model load.
    runtime: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    telemetry_readings: int = 0
    telemetry_batches: int = 0
    anomalies: int = 0


class TelemetryKey(SQLModel, table=True):
    """The deduplication key of each telemetry batch stored, with the fingerprint that tells a
    resend from a different batch under the same key (:mod:`cloud_hub.db.conflicts`).

    Ingest inserts here first (``ON CONFLICT DO NOTHING``) and stores a batch's row only when
    its key was new; the stream watermarks walk these keys (:mod:`cloud_hub.db.marks`). A table
    of its own because PostgreSQL cannot hold a unique key across the day partitions of
    :class:`TelemetryBatchRow` that lacks the partition key: (device_id, epoch, seq) alone would
    be unique per day, not for ever. Narrow, and on SQLite without a rowid (the key is the
    table). Retention deletes a batch's key with its row."""

    __tablename__ = "telemetry_keys"
    __table_args__ = {"sqlite_with_rowid": False}

    device_id: str = Field(primary_key=True, max_length=64)
    epoch: str = Field(primary_key=True, max_length=EPOCH_LENGTH)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    readings: int
    ts_first: float
    ts_last: float


class TelemetryBatchRow(SQLModel, table=True):
    """One telemetry batch as stored. Keyed (device_id, ts_first, epoch, seq): the key serves
    a device's readings in time order, and holds ``ts_first``, the partition key on PostgreSQL
    (range partitions by day, :mod:`cloud_hub.db.partitions`; SQLite has one table). A batch
    is stored once: ingest checks its (device_id, epoch, seq) in :class:`TelemetryKey`."""

    __tablename__ = "telemetry"
    __table_args__ = (PrimaryKeyConstraint("device_id", "ts_first", "epoch", "seq"),
                      # rollups fold rows in the order stored; retention deletes the oldest
                      Index("ix_telemetry_stored_at", "stored_at"),
                      {"postgresql_partition_by": "RANGE (ts_first)"})

    device_id: str = Field(primary_key=True, max_length=64)
    epoch: str = Field(primary_key=True, max_length=EPOCH_LENGTH)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    channels: list[str] = Field(sa_column=Column(JSON, nullable=False))
    readings: int
    ts_first: float = Field(primary_key=True)
    ts_last: float
    ts_blob: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    values_blob: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    stored_at: float


# PostgreSQL compresses a row's blobs once the row passes ~2 KB (a batch of 100 readings of 8
# channels is ~7 KB). Its default, pglz, cost about half of each such insert: 146 us per row
# against 82 with lz4 (2,000-row inserts of 100 x 8 readings; uncompressed 74 us, but 1.8x the
# disk of pglz, lz4 1.3x). lz4 where the server has it (PostgreSQL 14+ built with it); rows
# written before keep theirs, and both are read alike. Migration 0009 does the same.
TELEMETRY_LZ4 = """DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
             AND 'lz4' = ANY(enumvals)) THEN
    ALTER TABLE %(fullname)s ALTER COLUMN ts_blob SET COMPRESSION lz4,
                             ALTER COLUMN values_blob SET COMPRESSION lz4;
  END IF;
END $$"""
_LZ4_DDL = DDL(TELEMETRY_LZ4).execute_if(dialect="postgresql")  # type: ignore[no-untyped-call]
event.listen(TelemetryBatchRow.__table__, "after_create", _LZ4_DDL)  # type: ignore[attr-defined]
# Rows whose ts_first no day partition covers (a device clock far off, data older than the
# partitions kept) go to the default partition; the day partitions are made ahead of time.
_DEFAULT_PARTITION = DDL(  # type: ignore[no-untyped-call]
    "CREATE TABLE %(fullname)s_default PARTITION OF %(fullname)s DEFAULT"
).execute_if(dialect="postgresql")
event.listen(TelemetryBatchRow.__table__, "after_create",  # type: ignore[attr-defined]
             _DEFAULT_PARTITION)


class Anomaly(SQLModel, table=True):
    __tablename__ = "anomalies"
    __table_args__ = (Index("ix_anomalies_device_ts", "device_id", "ts_start"),)

    device_id: str = Field(primary_key=True, max_length=64)
    epoch: str = Field(primary_key=True, max_length=EPOCH_LENGTH)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    ts_start: float
    ts_end: float
    score: float
    threshold: float
    model_name: str
    model_version: int
    channels: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    detected_at: float
    stored_at: float = Field(index=True)
    # Set by the incident job (cloud_hub/incidents); NULL until the event is grouped.
    incident_id: int | None = Field(default=None, index=True)


class StreamMark(SQLModel, table=True):
    """Delivery state of one stream (telemetry or anomalies) of one device epoch.

    ``floor``: the highest floor the device has sent (what is below is stored or was dropped by
    the device). ``watermark``: every seq from the floor up to it is stored. ``top``: the highest
    seq stored. Advanced in SQL in the transaction that stores the rows, so every hub process
    sharing the database advances it from what any of them committed."""

    __tablename__ = "stream_marks"

    device_id: str = Field(primary_key=True, max_length=64)
    epoch: str = Field(primary_key=True, max_length=EPOCH_LENGTH)
    stream: str = Field(primary_key=True, max_length=16)
    floor: int = Field(default=0, sa_type=BigInteger)
    watermark: int = Field(default=-1, sa_type=BigInteger)
    top: int = Field(default=-1, sa_type=BigInteger)
    first_seen: float  # when this database first heard of the epoch: the newest is current
    updated_at: float
    # Retention deleted this stream's rows up to this seq (-1: none): they are not missing.
    pruned_through: int = Field(default=-1, sa_type=BigInteger)


# Every ingest transaction updates the mark of each stream it touched twice (the upsert, then
# the watermark) and the row of each device once. With pages packed full (the default
# fillfactor, 100) an update found no room on its page: a new index entry per update (not HOT),
# and tables swollen with dead rows (10,000 marks on 2,550 pages instead of 170). With pages
# kept 70% free, every update stays on its page (HOT): a 4,000-message batch of 10,000 devices
# stored in 181 ms instead of 232; of 1,000 devices, 94 instead of 100
# (docs/ingest-measurements.md).
# Migration 0012 sets the same on a database made before; pages written before keep theirs
# until rewritten.
HOT_FILLFACTOR = 30
_HOT_DDL = DDL(  # type: ignore[no-untyped-call]
    f"ALTER TABLE %(fullname)s SET (fillfactor = {HOT_FILLFACTOR})"
).execute_if(dialect="postgresql")
for _table in (Device.__table__, StreamMark.__table__):  # type: ignore[attr-defined]
    event.listen(_table, "after_create", _HOT_DDL)


class DeviceConflict(SQLModel, table=True):
    """A device id that two sources use (see :mod:`cloud_hub.db.conflicts`): what was seen
    (``kind``: ``epochs`` or ``seq``), the latest case in words, when first and last, how often.
    A table of its own, so that a database made before it only gains a table."""

    __tablename__ = "device_conflicts"

    device_id: str = Field(primary_key=True, max_length=64)
    kind: ConflictKind = enum_field(ConflictKind, length=16)
    detail: str
    epochs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    first_at: float
    last_at: float
    count: int = 0


class DeadLetter(SQLModel, table=True):
    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, primary_key=True)
    topic: str
    reason: str
    payload_preview: str
    payload_size: int
    received_at: float = Field(index=True)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    key_hash: str = Field(unique=True, index=True, max_length=64)
    prefix: str = Field(max_length=12)
    scope: Scope = enum_field(Scope, Scope.READ)
    created_at: float
    revoked_at: float | None = None
