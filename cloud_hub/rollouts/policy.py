"""The rollout policy as pure decisions over what a stage's devices reported.

Kept free of the database and MQTT so each rule can be read (and tested) on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeviceObservation", "StageVerdict", "judge_stage"]


@dataclass(frozen=True)
class DeviceObservation:
    device_id: str
    confirmed_at: float | None  # reported active on the new model
    failed: str | None  # reported failed/rolled_back on the new model, with the reason
    baseline_rate: float  # anomaly events per minute under the previous model
    anomalies_since_confirmed: int


@dataclass(frozen=True)
class StageVerdict:
    state: str  # "wait" | "pass" | "breach"
    reason: str = ""


def judge_stage(
    observations: list[DeviceObservation], *, now: float, stage_started_at: float,
    is_canary: bool, min_observation_s: float, max_failure_ratio: float,
    max_anomaly_rate_increase: float, stage_timeout_s: float,
) -> StageVerdict:
    total = len(observations)
    failed = [o for o in observations if o.failed is not None]
    timed_out = now - stage_started_at > stage_timeout_s
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
            "breach",
            f"install failure ratio {ratio:.2f} ({len(failed)}/{total}) exceeds "
            f"{max_failure_ratio:.2f}: {reasons}",
        )
    confirmed = [o for o in observations if o.confirmed_at is not None]
    if is_canary and confirmed:
        verdict = _anomaly_rate(confirmed, now, min_observation_s, max_anomaly_rate_increase)
        if verdict is not None:
            return verdict
    if pending:
        return StageVerdict("wait", f"{len(pending)} of {total} devices not confirmed yet")
    last = max((o.confirmed_at for o in confirmed if o.confirmed_at), default=stage_started_at)
    if now - last < min_observation_s:
        return StageVerdict("wait", f"observing for {min_observation_s:.0f}s")
    return StageVerdict("pass")


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
            "breach",
            f"canary anomaly rate rose by {shown:.2f} events/min per device over the previous "
            f"model (limit {limit:.2f})",
        )
    return None
