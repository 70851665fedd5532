"""When a retrain policy starts a retraining: pure decisions over devices' latest drift states.

Kept free of the database so each rule reads (and is tested) on its own. A device triggers
- ``drift``: its drift state is ``drift`` and has been for ``drift_hold_s`` (device time: from
  the detection to the end of its latest summary's period);
- ``anomaly_rate``: its anomaly rate over its latest period (with at least
  ``min_anomaly_windows`` windows) is above ``max_anomaly_rate_ratio`` × its baseline (the
  rate over the reference period after its model was installed; at least 0.1 %);
only when its summary is about the model it runs now, it is in no active retraining, and its
last retraining ended ``cooldown_s`` ago or more (or it had none).
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_hub.core.states import RetrainTrigger
from shared.messages import DriftState

__all__ = ["BASELINE_FLOOR", "DeviceDriftState", "PolicyRules", "Trigger", "device_trigger"]

BASELINE_FLOOR = 0.001  # a baseline of no anomalies at all still allows a few


@dataclass(frozen=True)
class PolicyRules:
    drift_hold_s: float
    max_anomaly_rate_ratio: float | None
    min_anomaly_windows: int
    cooldown_s: float


@dataclass(frozen=True)
class DeviceDriftState:
    device_id: str
    state: DriftState
    since: float | None  # device time of the drift's detection
    drifting: list[str]
    period_end: float  # device time of the latest summary's end
    windows: int
    anomalies: int
    baseline_windows: int
    baseline_anomalies: int
    summary_model: tuple[str, int] | None  # the model the summary is about
    active_model: tuple[str, int] | None  # the model the device reports it runs
    busy: bool  # in an active retraining
    last_run_ended_at: float | None  # hub time
    updated_at: float  # hub time the summary was stored

    @property
    def anomaly_rate(self) -> float | None:
        return self.anomalies / self.windows if self.windows else None

    @property
    def baseline_rate(self) -> float | None:
        return (self.baseline_anomalies / self.baseline_windows
                if self.baseline_windows else None)


@dataclass(frozen=True)
class Trigger:
    device_id: str
    kind: RetrainTrigger  # drift or anomaly_rate
    reason: str
    since: float | None  # device time from which the new regime's data may be used


def device_trigger(d: DeviceDriftState, rules: PolicyRules, *, now: float) -> Trigger | None:
    """The trigger ``d`` fires under ``rules`` at hub time ``now``, or None."""
    if d.busy or d.active_model is None or d.summary_model != d.active_model:
        return None
    if d.last_run_ended_at is not None and (
            now - d.last_run_ended_at < rules.cooldown_s or d.updated_at <= d.last_run_ended_at):
        return None
    if d.state == DriftState.DRIFT and d.since is not None:
        held = d.period_end - d.since
        if held >= rules.drift_hold_s:
            channels = ", ".join(d.drifting) or "?"
            return Trigger(d.device_id, RetrainTrigger.DRIFT,
                           f"{d.device_id}: drift on {channels} held {held:.0f} s "
                           f"(policy: {rules.drift_hold_s:.0f} s)", d.since)
    ratio = rules.max_anomaly_rate_ratio
    rate, base = d.anomaly_rate, d.baseline_rate
    if (ratio is not None and rate is not None and base is not None
            and d.windows >= rules.min_anomaly_windows):
        limit = ratio * max(base, BASELINE_FLOOR)
        if rate > limit:
            return Trigger(d.device_id, RetrainTrigger.ANOMALY_RATE,
                           f"{d.device_id}: anomaly rate {100 * rate:.2f} % of windows is above "
                           f"{ratio:g} × its baseline {100 * base:.2f} %", None)
    return None
