"""Tables of the model registry, training jobs and rollouts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud_hub.core.states import JobStatus, ModelStatus, RolloutStatus
from cloud_hub.db.types import enum_field, model_field
from cloud_hub.jobs.request import TrainingRequest
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget

__all__ = ["ModelRelease", "ModelVariant", "ModelVersion", "Rollout", "RolloutDevice",
           "TrainingJob"]


class ModelVersion(SQLModel, table=True):
    """One registered model version: how it was made, what it measured, and its signed manifest."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=64)
    version: int
    status: ModelStatus = enum_field(ModelStatus, ModelStatus.DRAFT)
    created_at: float
    published_at: float | None = None
    retired_at: float | None = None
    family: str
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    channels: list[str] = Field(sa_column=Column(JSON, nullable=False))
    training: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    normalization: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    input: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    score: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    threshold: float
    threshold_method: str
    quantization: str
    size_bytes: int
    float_size_bytes: int
    sha256: str
    parity: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    parity_passed: bool
    parity_failure: str | None = None
    validation: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    extra: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    key_id: str  # "" while a draft: only a release is signed
    # A draft holds the manifest's fields without release, key_id and signature; once
    # released, the signed manifest of its latest release.
    manifest: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    tflite: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    training_job_id: int | None = None


class ModelVariant(SQLModel, table=True):
    """Another quantization of a version that passed the parity gate (issue 12), kept beside
    the version's own (published) one so that each device can be sent the faster one there.
    Released with the version: the same release number and key, its own signed manifest."""

    __tablename__ = "model_variants"
    __table_args__ = (UniqueConstraint("model_id", "quantization",
                                       name="uq_model_variants_model_quantization"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id", index=True)
    quantization: str = Field(max_length=16)
    size_bytes: int
    sha256: str
    parity: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    # as ModelVersion.manifest: a draft's fields, then the signed manifest of the latest release
    manifest: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    tflite: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ModelRelease(SQLModel, table=True):
    """Every signed release of a model name: its counter, the version it carries, and why.

    The counter only grows per name; a rollback the hub decides is a new release of an older
    version. Agents refuse a manifest whose release is lower than the one they installed."""

    __tablename__ = "model_releases"
    __table_args__ = (UniqueConstraint("name", "release", name="uq_model_releases_name_release"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=64)
    release: int
    version: int
    key_id: str
    created_at: float
    reason: str  # publish | rollback | desired | re-signed after retiring KEY


class TrainingJob(SQLModel, table=True):
    __tablename__ = "training_jobs"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    status: JobStatus = enum_field(JobStatus, JobStatus.QUEUED)
    request: TrainingRequest = model_field(TrainingRequest)
    progress: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    # asked to stop through a process other than the one running it (which polls this)
    cancel_requested_at: float | None = None


class TrainingUpload(SQLModel, table=True):
    """A CSV uploaded for training, parsed to rows x channels (float32, as .npy), kept in the
    database so that whichever hub process runs the job reads it; deleted once its job is
    (:mod:`cloud_hub.maintenance.retention`)."""

    __tablename__ = "training_uploads"

    name: str = Field(primary_key=True, max_length=64)
    job_id: int | None = Field(default=None, index=True)
    rows: int
    created_at: float
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Rollout(SQLModel, table=True):
    __tablename__ = "rollouts"

    id: int | None = Field(default=None, primary_key=True)
    model_name: str
    model_version: int
    status: RolloutStatus = enum_field(RolloutStatus, RolloutStatus.RUNNING)
    target: RolloutTarget = model_field(RolloutTarget)
    policy: RolloutPolicy = model_field(RolloutPolicy)
    stage: int = 0  # 0 = canary, 1.. = waves
    stages: list[list[str]] = Field(sa_column=Column(JSON, nullable=False))
    stage_started_at: float | None = None
    reason: str | None = None
    created_at: float
    finished_at: float | None = None
    seconds_to_full: float | None = None


class RolloutDevice(SQLModel, table=True):
    """A device a rollout touched: what it ran before, and what it was told to run."""

    __tablename__ = "rollout_devices"

    rollout_id: int = Field(primary_key=True, foreign_key="rollouts.id")
    device_id: str = Field(primary_key=True, max_length=64)
    stage: int
    previous_name: str | None = None
    previous_version: int | None = None
    desired_at: float | None = None
    confirmed_at: float | None = None  # reported active on the rollout's model
    failed_at: float | None = None
    failure: str | None = None
    reverted_at: float | None = None  # desired set back to the previous model
    revert_confirmed_at: float | None = None
    variant: str | None = Field(default=None, max_length=16)  # the quantization it was sent
    # Anomaly rate (events per device-minute) before and during the stage, for the policy.
    baseline_rate: float | None = None
