"""Tables of drift monitoring and of the retraining loop.

``drift_summaries`` keeps every drift summary a device sent (keyed like the other durable
streams, (device_id, epoch, seq)); ``device_drift`` the latest state of each device, updated in
the ingest transaction (the fleet drift view reads it); ``retrain_policies`` what starts a
retraining for a device group, and ``retrain_runs`` each retraining with every step and its
reason. Tables of their own, so a database made before them only gains tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from cloud_hub.core.states import RetrainScope, RetrainState, RetrainTrigger, TrainingSource
from cloud_hub.db.tables import EPOCH_LENGTH
from cloud_hub.db.types import enum_field
from shared.messages import DriftState

__all__ = ["DeviceDrift", "DriftSummaryRow", "RetrainPolicy", "RetrainRun"]


class DriftSummaryRow(SQLModel, table=True):
    __tablename__ = "drift_summaries"
    __table_args__ = (Index("ix_drift_summaries_device_end", "device_id", "period_end"),)

    device_id: str = Field(primary_key=True, max_length=64)
    epoch: str = Field(primary_key=True, max_length=EPOCH_LENGTH)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    period_start: float
    period_end: float
    state: DriftState = enum_field(DriftState, length=16)
    since: float | None = None
    drifting: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    model_name: str | None = Field(default=None, max_length=64)
    model_version: int | None = None
    readings: int = 0
    windows: int = 0
    anomalies: int = 0
    baseline_windows: int = 0
    baseline_anomalies: int = 0
    detections: int = 0
    channels: list[dict[str, Any]] = Field(default_factory=list,
                                           sa_column=Column(JSON, nullable=False))
    score: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Sufficient statistics of normal windows (devices with telemetry.upload = "summaries")
    training: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    has_training: bool = Field(default=False, index=True)
    stored_at: float = Field(index=True)


class DeviceDrift(SQLModel, table=True):
    """The latest drift summary of a device, in brief (the fleet drift view)."""

    __tablename__ = "device_drift"

    device_id: str = Field(primary_key=True, max_length=64)
    state: DriftState = enum_field(DriftState, length=16)
    since: float | None = None
    drifting: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    model_name: str | None = Field(default=None, max_length=64)
    model_version: int | None = None
    windows: int = 0
    anomalies: int = 0
    baseline_windows: int = 0
    baseline_anomalies: int = 0
    detections: int = 0
    period_start: float
    period_end: float
    updated_at: float


class RetrainPolicy(SQLModel, table=True):
    """What starts a retraining for a device group (``group`` "default": the policy of devices
    whose group has none), and how it is trained and rolled out."""

    __tablename__ = "retrain_policies"

    group: str = Field(primary_key=True, max_length=64)
    enabled: bool = True
    drift_hold_s: float = 600.0  # drift held this long triggers
    max_anomaly_rate_ratio: float | None = 5.0  # anomaly rate above ratio × baseline triggers
    min_anomaly_windows: int = 100  # ... once the period has this many windows
    scope: RetrainScope = enum_field(RetrainScope, RetrainScope.DRIFTED, length=16)
    source: TrainingSource = enum_field(TrainingSource, TrainingSource.TELEMETRY, length=16)
    recent_s: float = 1800.0  # data of this long before the trigger trains the new model
    cooldown_s: float = 1800.0  # no new automatic run for a device sooner than this
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    rollout: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: float


class RetrainRun(SQLModel, table=True):
    """One retraining: trigger, training job, parity gate, release, canary rollout, outcome;
    ``steps`` holds each step with its time and reason."""

    __tablename__ = "retrain_runs"
    __table_args__ = (Index("ix_retrain_runs_state", "state"),)

    id: int | None = Field(default=None, primary_key=True)
    group: str = Field(max_length=64)
    trigger: RetrainTrigger = enum_field(RetrainTrigger, length=16)
    reason: str
    devices: list[str] = Field(sa_column=Column(JSON, nullable=False))
    model_name: str = Field(max_length=64)
    state: RetrainState = enum_field(RetrainState, RetrainState.TRIGGERED, length=16)
    training_job_id: int | None = None
    model_version: int | None = None
    rollout_id: int | None = None
    source: TrainingSource = enum_field(TrainingSource, TrainingSource.TELEMETRY, length=16)
    since: float | None = None  # start of the data the new model is trained on
    until: float | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list,
                                        sa_column=Column(JSON, nullable=False))
    requested_by: str | None = Field(default=None, max_length=64)
    created_at: float
    updated_at: float
    finished_at: float | None = None
