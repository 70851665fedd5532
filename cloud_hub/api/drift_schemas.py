"""Request bodies of the drift routes: retrain policies and operator-started retrainings."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_hub.api.schemas import RolloutPolicy, TrainingSpecBody
from cloud_hub.core.states import RetrainScope, TrainingSource
from shared.topics import DEVICE_ID_PATTERN

__all__ = ["RetrainPolicyBody", "RetrainRunCreate"]

DeviceId = Annotated[str, StringConstraints(pattern=rf"^{DEVICE_ID_PATTERN}$")]
_DAY = 86_400.0


class RetrainPolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "drift_hold_s": 600, "max_anomaly_rate_ratio": 5, "scope": "drifted",
        "spec": {"family": "pca", "window": 10, "latent": 8},
        "rollout": {"canary_size": 1, "min_observation_s": 120,
                    "max_anomaly_rate_increase": 1.0}}]})

    enabled: bool = True
    drift_hold_s: float = Field(default=600.0, ge=0, le=30 * _DAY,
                                description="a device in drift this long triggers")
    max_anomaly_rate_ratio: float | None = Field(
        default=5.0, gt=1, le=1e6, description="a device whose anomaly rate is above this "
        "many times its baseline triggers (null: never)")
    min_anomaly_windows: int = Field(default=100, ge=1, le=10**9)
    scope: RetrainScope = Field(
        default=RetrainScope.DRIFTED,
        description="retrain for the devices that triggered, or for the whole group's "
        "devices on the same model")
    source: TrainingSource = Field(
        default=TrainingSource.TELEMETRY,
        description="train on stored readings judged normal, or on the devices' "
        "federated statistics (telemetry.upload = \"summaries\")")
    recent_s: float = Field(default=1800.0, gt=0, le=365 * _DAY,
                            description="train on at most this much recent data")
    cooldown_s: float = Field(default=1800.0, ge=0, le=365 * _DAY,
                              description="no new automatic retraining of a device sooner")
    spec: TrainingSpecBody | None = Field(
        default=None, description="fields over the spec of the model the devices run")
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)

    def stored(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["spec"] = self.spec.model_dump(mode="json", exclude_unset=True) if self.spec else {}
        return data


class RetrainRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "devices": ["pump-001", "pump-002"], "reason": "sensors recalibrated on line 2"}]})

    devices: list[DeviceId] | None = Field(default=None, min_length=1, max_length=10_000)
    group: str | None = Field(default=None, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)
    source: TrainingSource | None = None
    recent_s: float | None = Field(default=None, gt=0, le=365 * _DAY)
