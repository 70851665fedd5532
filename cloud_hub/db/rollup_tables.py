"""Per-channel summaries of telemetry over fixed buckets (1 minute, 1 hour), kept far longer
than the raw rows, and the maintenance job's progress.

A bucket row adds up what every raw row falling in it contributed, per channel: count, sum,
min, max (mean = sum / count), so that a row is folded in once and a bucket can be completed by
late rows. :mod:`cloud_hub.maintenance.rollups` maintains them.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

__all__ = ["MaintenanceMark", "TelemetryRollup"]


class TelemetryRollup(SQLModel, table=True):
    """One bucket of one device: every channel's count, sum, min and max as little-endian
    arrays in the order of ``channels`` (a JSON list). One row per bucket, not per channel:
    30 days of hours for 100 devices is 72,000 rows to read, and they are decoded with numpy,
    not one Python object per number."""

    __tablename__ = "telemetry_rollups"
    __table_args__ = (Index("ix_rollups_bucket", "bucket"),)  # retention, oldest first

    device_id: str = Field(primary_key=True, max_length=64)
    resolution: str = Field(primary_key=True, max_length=4)  # "1m" | "1h"
    bucket: float = Field(primary_key=True)  # start of the bucket, epoch seconds
    channels: str  # JSON list of the channel names
    counts: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # int64 each
    sums: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # float64 each
    mins: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    maxs: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class MaintenanceMark(SQLModel, table=True):
    """How far a maintenance job got (e.g. the rollups: raw rows stored up to ``value``, and
    within that instant, keys up to ``key``, are folded in)."""

    __tablename__ = "maintenance_marks"

    name: str = Field(primary_key=True, max_length=64)
    value: float = 0.0
    key: str = Field(default="", max_length=256)
    updated_at: float = 0.0
