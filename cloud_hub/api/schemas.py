"""Request and response bodies of the REST API (validated, with OpenAPI examples).

The model registry's responses are in :mod:`cloud_hub.api.model_schemas` (re-exported here);
drift's, incidents' and webhooks' bodies in their own ``*_schemas`` modules.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_hub.api.model_schemas import ModelComparison, ModelDetail, ModelSummary
from cloud_hub.core.states import JobStatus, RolloutStatus
from cloud_hub.jobs.request import TrainingRequest
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget
from cloud_hub.training import limits
from shared.messages import MAX_CHANNELS
from shared.topics import DEVICE_ID_PATTERN, MODEL_NAME_PATTERN

__all__ = [
    "AnomalyPublic", "ApiKeyCreate", "ApiKeyCreated", "ApiKeyPublic", "DeadLetterPublic",
    "DesiredUpdate", "DevicePublic", "DeviceUpdate", "HealthPublic", "MetricsPublic",
    "ModelComparison", "ModelDetail", "ModelRefBody", "SigningKeyPublic",
    "ModelSummary", "RolloutCreate", "RolloutDevicePublic", "RolloutPolicy", "RolloutPublic",
    "RolloutTarget", "TelemetryPublic",
    "TelemetrySummary", "TrainingJobCreate", "TrainingJobPublic", "TrainingSpecBody",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


DeviceId = Annotated[str, StringConstraints(pattern=rf"^{DEVICE_ID_PATTERN}$")]


class ModelRefBody(_Body):
    name: str = Field(pattern=rf"^{MODEL_NAME_PATTERN}$", examples=["pump-ae"])
    version: int = Field(ge=1, le=2**31 - 1, examples=[3])


class DesiredModelBody(ModelRefBody):
    variant: str | None = Field(
        default=None, pattern=r"^[a-z0-9]{1,16}$", examples=["float32"],
        description="a variant (quantization) the version keeps; by default the hub picks the "
        "fastest that passed the parity gate for the runtime the device reported")


class DesiredUpdate(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": {"name": "pump-ae", "version": 3}}]},
    )
    model: DesiredModelBody | None
    config: dict[str, float | int | str | bool] = Field(default_factory=dict)


class DeviceUpdate(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"group": "plant-a", "tags": ["pump", "line-2"]}]},
    )
    group: str | None = Field(default=None, max_length=64)
    tags: list[str] | None = Field(default=None, max_length=32)


class DeviceConflictPublic(BaseModel):
    """A device id used by two sources, as ingest saw it."""

    kind: str = Field(description="epochs: an older epoch sent after a newer one began; "
                                  "seq: one seq arrived twice with different readings")
    detail: str
    epochs: list[str]
    first_at: float
    last_at: float
    count: int = Field(description="ingest batches that showed it")


class RuntimePreference(BaseModel):
    quantization: str = Field(description="int8 or float32")
    reason: str


class DevicePublic(BaseModel):
    device_id: str
    online: bool
    last_seen: float | None
    status_at: float | None
    agent_version: str
    active_model: dict[str, Any] | None = Field(
        description="name, version, sha256 and variant (the quantization it reports running)")
    desired_model: dict[str, Any] | None = Field(
        description="name, version, and for a version with several variants the variant the "
        "device was sent (variant) and why (variant_reason)")
    reported_model: dict[str, Any] | None
    reported_state: str | None
    reported_error: str | None
    tags: list[str]
    group: str | None
    telemetry_readings: int
    telemetry_batches: int
    anomalies: int
    heartbeat: dict[str, Any] | None
    runtime: dict[str, Any] | None = Field(
        default=None, description="the TFLite runtime the device's status reported (package, "
        "version, xnnpack_int8); null for agents that do not report it or have loaded no model")
    runtime_prefers: RuntimePreference | None = Field(
        default=None, description="which variant of a model runs fastest on that runtime; "
        "rollouts send each device that variant when the version keeps it")
    in_sync: bool = Field(description="desired model equals the active model")
    conflict: DeviceConflictPublic | None = Field(
        default=None, description="set when two sources use this device id")


class TelemetryPublic(BaseModel):
    device_id: str
    channels: list[str]
    ts: list[float]
    values: list[list[float]]


class TelemetrySummary(BaseModel):
    device_id: str
    readings: int
    batches: int
    first_ts: float | None
    last_ts: float | None
    seq_first: int  # of the latest epoch
    seq_last: int
    missing_batches: int  # seqs never stored below the highest one, from 0 in every epoch
    epochs: int = Field(default=1, description="stream epochs seen (a new one per device state)")


class AnomalyPublic(BaseModel):
    device_id: str
    epoch: str
    seq: int
    ts_start: float
    ts_end: float
    score: float
    threshold: float
    model_name: str
    model_version: int
    channels: list[str]
    detected_at: float
    stored_at: float


class DeadLetterPublic(BaseModel):
    id: int
    topic: str
    reason: str
    payload_preview: str
    payload_size: int
    received_at: float


class TrainingSpecBody(_Body):
    """The fields of ``TrainingSpec`` a request may set, each with its bounds."""

    family: Literal["dense_ae", "conv1d_ae", "pca"] = "dense_ae"
    window: int = Field(default=32, ge=2, le=limits.MAX_WINDOW)
    train_stride: int = Field(default=1, ge=1, le=limits.MAX_STRIDE)
    score_stride: int = Field(default=1, ge=1, le=limits.MAX_STRIDE)
    hidden: int = Field(default=32, ge=1, le=limits.MAX_HIDDEN)
    latent: int = Field(default=8, ge=1, le=limits.MAX_LATENT)
    epochs: int = Field(default=20, ge=1, le=limits.MAX_EPOCHS)
    batch_size: int = Field(default=64, ge=1, le=limits.MAX_BATCH_SIZE)
    learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    validation_fraction: float = Field(default=0.2, ge=0.05, le=0.5)
    normalization: Literal["zscore", "minmax"] = "zscore"
    score_method: Literal["mse", "mae"] = "mse"
    score_reduce: Literal["mean", "channel_max"] = Field(
        default="mean",
        description="mean: the mean error over the window; channel_max: the worst channel's "
                    "error in units of its typical error on held-out windows (for faults on "
                    "one channel)")
    smoothing: int = Field(default=1, ge=1, le=limits.MAX_SMOOTHING)
    threshold_method: Literal["quantile", "f1"] = "quantile"
    threshold_quantile: float = Field(default=0.999, ge=0.5, lt=1)
    threshold_factor: float = Field(default=1.0, gt=0, le=limits.MAX_THRESHOLD_FACTOR)
    quantization: Literal["int8", "float16", "dynamic", "float32", "auto"] = Field(
        default="int8",
        description="auto: the fastest mode that passes the parity gate (the result says why)")
    min_agreement: float = Field(
        default=0.99, ge=0, le=1,
        description="the parity gate; at least the hub's floor (EDGELOOP_MIN_PARITY_AGREEMENT)")
    seed: int = Field(default=0, ge=0, le=limits.MAX_SEED)
    max_train_windows: int = Field(default=12_000, ge=limits.MIN_TRAIN_WINDOWS,
                                   le=limits.MAX_TRAIN_WINDOWS)
    patience: int = Field(default=3, ge=0, le=limits.MAX_PATIENCE)
    compare_modes: bool = True
    representative_scale: float = Field(default=1.0, ge=1.0, le=100.0)


ChannelName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class TrainingJobCreate(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "name": "pump-ae", "devices": ["pump-001", "pump-002"],
            "channels": ["pressure", "flow", "temperature"],
            "spec": {"family": "dense_ae", "window": 32, "epochs": 20, "quantization": "int8"},
        }]},
    )
    name: str = Field(pattern=rf"^{MODEL_NAME_PATTERN}$")
    devices: list[DeviceId] | None = Field(default=None, min_length=1,
                                           max_length=limits.MAX_TRAINING_DEVICES)
    channels: list[ChannelName] | None = Field(default=None, min_length=1,
                                               max_length=MAX_CHANNELS)
    since: float | None = Field(default=None, ge=0)
    until: float | None = Field(default=None, ge=0)
    spec: TrainingSpecBody = Field(default_factory=TrainingSpecBody,
                                   description="TrainingSpec fields (family, window, epochs, …)")


class TrainingJobPublic(BaseModel):
    id: int
    name: str
    status: JobStatus
    progress: dict[str, Any]
    error: str | None
    model: dict[str, Any] | None
    request: TrainingRequest
    created_at: float
    started_at: float | None
    finished_at: float | None
    cancel_requested_at: float | None = Field(
        default=None, description="asked to stop through another hub process; the one "
                                  "running it stops it within a few seconds")


class HealthPublic(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: the broker is unreachable")
    mqtt_connected: bool
    database: str = Field(description='"ok", or "error: <kind>"')


class SigningKeyPublic(BaseModel):
    key_id: str
    public_key: str = Field(description="base64 of the 32 raw Ed25519 public key bytes")


class MetricsPublic(BaseModel):
    """This hub process's ingest and delivery figures (more may be added; each is a number or
    a flag, except the process's names and its leases). ``?format=prometheus`` gives them in
    Prometheus' text format."""

    model_config = ConfigDict(extra="allow")
    publisher_connected: bool
    uptime_s: float
    client_id: str = Field(description="this process's MQTT client id")
    lease_holder: str = Field(description="this process's name in the job_leases table")
    leases: dict[str, bool] = Field(description="job lease -> whether this process holds it")


class HubProcessPublic(BaseModel):
    """A hub process on this database, as it last reported itself."""

    holder: str = Field(description="its name in the job leases")
    client_id: str = Field(description="its MQTT client id")
    host: str
    pid: int
    version: str
    state: Literal["running", "silent", "stopped"] = Field(
        description="silent: no report for three report intervals (killed, hung, or cut off "
                    "from the database)")
    started_at: float
    seen_at: float = Field(description="its last report")
    stopped_at: float | None
    report_s: float = Field(description="how often it reports")
    leases: list[str] = Field(description="the job leases it holds now")
    figures: dict[str, float] = Field(
        description="its ingest counters at its last report, and messages_per_s and "
                    "readings_per_s since the report before")


class ApiKeyCreate(_Body):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "grafana", "scope": "read"}]}
    )
    name: str = Field(min_length=1, max_length=64)
    scope: Literal["read", "admin"] = "read"


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    prefix: str
    scope: str
    created_at: float
    revoked_at: float | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the secret; shown only in this response")


class RolloutCreate(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "model": {"name": "pump-ae", "version": 3},
            "target": {"group": "plant-a", "percent": 50},
            "policy": {"canary_size": 2, "wave_size": 20, "min_observation_s": 60},
        }]},
    )
    model: ModelRefBody
    target: RolloutTarget = Field(default_factory=RolloutTarget)
    policy: RolloutPolicy = Field(default_factory=RolloutPolicy)


class RolloutDevicePublic(BaseModel):
    device_id: str
    stage: int
    previous: dict[str, Any] | None
    variant: str | None = Field(default=None, description="the variant (quantization) of the "
                                "rollout's model this device was sent")
    desired: dict[str, Any] | None
    reported: dict[str, Any] | None = Field(description="the model the device runs (name, "
                                            "version, variant)")
    reported_state: str | None
    reported_error: str | None
    confirmed_at: float | None
    failure: str | None
    reverted_at: float | None
    revert_confirmed_at: float | None


class RolloutPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 4, "model": {"name": "pump-ae", "version": 3}, "status": "running",
        "reason": None, "stage": 1, "stages": 3, "stage_sizes": [2, 20, 18],
        "devices_total": 40, "devices_updated": 9, "devices_failed": 0, "devices_reverted": 0,
        "target": {"group": "plant-a", "percent": 100}, "policy": {"canary_size": 2},
        "created_at": 1795500000.0, "finished_at": None, "seconds_to_full": None,
    }]})
    id: int
    model: dict[str, Any]
    status: RolloutStatus
    reason: str | None
    stage: int
    stages: int
    stage_sizes: list[int]
    devices_total: int
    devices_updated: int
    devices_failed: int
    devices_reverted: int
    variants: dict[str, int] = Field(
        default_factory=dict, description="devices sent each variant (quantization) so far")
    target: RolloutTarget
    policy: RolloutPolicy
    created_at: float
    finished_at: float | None
    seconds_to_full: float | None
    devices: list[RolloutDevicePublic] | None = None
