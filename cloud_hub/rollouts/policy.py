"""The rollout policy: its rules (:class:`RolloutPolicy`, what the API takes, the rollout row
stores and the controller reads) and pure decisions over what a stage's devices reported.

Kept free of the database and MQTT so each rule can be read (and tested) on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_hub.core.states import Verdict
from shared.topics import DEVICE_ID_PATTERN

__all__ = ["DeviceObservation", "RolloutPolicy", "RolloutTarget", "StageVerdict", "judge_stage"]

DeviceId = Annotated[str, StringConstraints(pattern=rf"^{DEVICE_ID_PATTERN}$")]


class RolloutTarget(BaseModel):
    """Which devices a rollout is for: ids, or a group and/or tags; then a percentage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: list[DeviceId] | None = Field(default=None, min_length=1, max_length=100_000)
    group: str | None = None
    tags: list[str] | None = None
    percent: int = Field(default=100, ge=1, le=100)


class RolloutPolicy(BaseModel):
    """How a rollout is cut into stages and when a stage passes or breaches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_size: int = Field(default=1, ge=1, le=100_000,
                             description="devices in the canary stage")
    canary_percent: int | None = Field(default=None, ge=1, le=100)
    wave_size: int = Field(default=10, ge=1, le=100_000,
                           description="devices per wave after the canary")
    min_observation_s: float = Field(default=30.0, ge=0)
    max_failure_ratio: float = Field(default=0.2, ge=0, le=1)
    max_anomaly_rate_increase: float = Field(
        default=2.0, ge=0,
        description="canary anomaly events per device-minute may exceed their own rate under "
        "the previous model by at most this many events per minute",
    )
    stage_timeout_s: float = Field(default=600.0, gt=0,
                                   description="a stage whose devices never report fails")


@dataclass(frozen=True)
class DeviceObservation:
    device_id: str
    confirmed_at: float | None  # reported active on the new model
    failed: str | None  # reported failed/rolled_back on the new model, with the reason
    baseline_rate: float  # anomaly events per minute under the previous model
    anomalies_since_confirmed: int


@dataclass(frozen=True)
class StageVerdict:
    state: Verdict
    reason: str = ""


def judge_stage(
    observations: list[DeviceObservation], policy: RolloutPolicy, *, now: float,
    stage_started_at: float, is_canary: bool,
) -> StageVerdict:
    min_observation_s, max_failure_ratio = policy.min_observation_s, policy.max_failure_ratio
    total = len(observations)
    failed = [o for o in observations if o.failed is not None]
    timed_out = now - stage_started_at > policy.stage_timeout_s
    pending = [o for o in observations if o.failed is None and o.confirmed_at is None]
    if timed_out and pending:
        failed = failed + pending
        pending = []
    ratio = len(failed) / total if total else 0.0
    # Failures only grow, so a breach of the ratio is final as soon as it happens.
    if ratio > max_failure_ratio:
        reasons = "; ".join(
            f"{o.device_id}: {o.failed or 'no report within the stage timeout'}"
            for o in failed[:3]
        )
        return StageVerdict(
            Verdict.BREACH,
            f"install failure ratio {ratio:.2f} ({len(failed)}/{total}) exceeds "
            f"{max_failure_ratio:.2f}: {reasons}",
        )
    confirmed = [o for o in observations if o.confirmed_at is not None]
    if is_canary and confirmed:
        verdict = _anomaly_rate(confirmed, now, min_observation_s,
                                 policy.max_anomaly_rate_increase)
        if verdict is not None:
            return verdict
    if pending:
        return StageVerdict(Verdict.WAIT, f"{len(pending)} of {total} devices not confirmed yet")
    last = max((o.confirmed_at for o in confirmed if o.confirmed_at), default=stage_started_at)
    if now - last < min_observation_s:
        return StageVerdict(Verdict.WAIT, f"observing for {min_observation_s:.0f}s")
    return StageVerdict(Verdict.PASS)


def _anomaly_rate(
    confirmed: list[DeviceObservation], now: float, min_observation_s: float, limit: float,
) -> StageVerdict | None:
    """Breach when the canary's mean anomaly rate rose by more than ``limit`` events/min.

    Before the observation time is up, a breach is declared only when it is already certain:
    counts can only grow, so dividing by the full observation time is a lower bound.
    """
    increases, certain = [], []
    for o in confirmed:
        assert o.confirmed_at is not None
        observed = max(now - o.confirmed_at, 1e-9)
        window = max(observed, min_observation_s, 1.0)
        increases.append(o.anomalies_since_confirmed / (observed / 60.0) - o.baseline_rate)
        certain.append(o.anomalies_since_confirmed / (window / 60.0) - o.baseline_rate)
    lower_bound = sum(certain) / len(certain)
    oldest = min(now - o.confirmed_at for o in confirmed if o.confirmed_at is not None)
    mean_increase = sum(increases) / len(increases)
    if lower_bound > limit or (oldest >= min_observation_s and mean_increase > limit):
        shown = lower_bound if lower_bound > limit else mean_increase
        return StageVerdict(
            Verdict.BREACH,
            f"canary anomaly rate rose by {shown:.2f} events/min per device over the previous "
            f"model (limit {limit:.2f})",
        )
    return None
