"""The closed loop: drift seen on devices -> training job -> parity gate -> canary -> promotion.

A :class:`RetrainLoop` tick (run by a :class:`~cloud_hub.jobs.leased.LeasedWorker`, so in one
hub process at a time; its state is the ``retrain_runs`` table) does two things:

- it looks at each device's latest drift state under its group's :class:`RetrainPolicy` (the
  rules are :func:`cloud_hub.drift.triggers.device_trigger`) and opens a run for the devices
  that trigger, grouped by policy and model name; an operator opens one through the API;
- it moves every open run one step: ``triggered`` queues a training job on the hub's job runner
  (recent readings of the run's devices, the windows of stored anomaly events left out, with
  the spec of the model they run; or their federated statistics), ``training`` waits for it and
  then releases the new version (the registry refuses a version that failed the parity gate)
  and starts a canary rollout with the policy's quality rules (the rollout controller does the
  rest), ``canary`` waits for the rollout: ``promoted`` when it succeeded, ``rolled_back`` when
  the canary breached the policy, ``failed`` otherwise.

Every step is appended to the run's ``steps`` with its hub time and reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.core.states import (
    JobStatus,
    RetrainScope,
    RetrainState,
    RetrainTrigger,
    RolloutStatus,
    TrainingSource,
)
from cloud_hub.db.drift_tables import DeviceDrift, RetrainPolicy, RetrainRun
from cloud_hub.db.leases import Lease, LeaseLost, session_under
from cloud_hub.db.registry_tables import ModelVersion, Rollout, TrainingJob
from cloud_hub.db.tables import Device
from cloud_hub.drift.triggers import DeviceDriftState, PolicyRules, Trigger, device_trigger
from cloud_hub.jobs.request import FederatedSet, TrainingRequest
from cloud_hub.jobs.training import JobRunner
from cloud_hub.registry.lifecycle import PublishRefused, publish_model
from cloud_hub.registry.releases import Releases
from cloud_hub.rollouts.actions import RolloutConflict, create_rollout
from cloud_hub.rollouts.planning import RolloutPlanError
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget

__all__ = ["ACTIVE_RUN_STATES", "DEFAULT_POLICY", "RetrainError", "RetrainLoop", "open_run",
           "policy_for", "rollout_policy"]

log = logging.getLogger(__name__)

ACTIVE_RUN_STATES = (RetrainState.TRIGGERED, RetrainState.TRAINING, RetrainState.CANARY)
DEFAULT_POLICY = "default"  # the policy of devices whose group has none
# A retraining's canary is judged longer and stricter than the API's default rollout.
_ROLLOUT_DEFAULTS = RolloutPolicy(min_observation_s=60.0, max_anomaly_rate_increase=1.0)


class RetrainError(ValueError):
    """A retraining that cannot be opened (no devices, no model to retrain)."""


def rollout_policy(policy: RetrainPolicy | None) -> RolloutPolicy:
    """The rollout policy a run's canary is judged by (the policy's fields over the
    defaults); a stored field the rollout policy does not have is refused here."""
    overrides = (policy.rollout if policy else None) or {}
    return RolloutPolicy.model_validate({**_ROLLOUT_DEFAULTS.model_dump(), **overrides})


def policy_for(policies: dict[str, RetrainPolicy], group: str | None) -> RetrainPolicy | None:
    """A device group's policy, else the default one (group ``default``)."""
    return (policies.get(group) if group else None) or policies.get(DEFAULT_POLICY)


def _step(run: RetrainRun, step: str, reason: str, now: float, **extra: Any) -> None:
    run.steps = [*run.steps, {"at": now, "step": step, "reason": reason, **extra}]
    run.updated_at = now
    log.info("retrain run %s: %s: %s", run.id, step, reason)


def _finish(run: RetrainRun, state: RetrainState, reason: str, now: float) -> None:
    run.state = state
    run.finished_at = now
    _step(run, state, reason, now)


def open_run(session: Session, *, devices: list[str], trigger: RetrainTrigger, reason: str,
             now: float,
             policy: RetrainPolicy | None, since: float | None = None,
             requested_by: str | None = None, source: TrainingSource | None = None,
             device_since: dict[str, float] | None = None) -> RetrainRun:
    """Record a new run for ``devices`` (they must run one model name); commits.

    ``device_since``: per device, when its new regime began (its drift's detection): its
    readings are used from then on (and within the policy's ``recent_s``)."""
    rows = list(session.exec(select(Device).where(col(Device.device_id).in_(devices))))
    names = sorted({d.active_name for d in rows if d.active_name})
    if not rows or not names:
        raise RetrainError(f"devices {devices} run no model: nothing to retrain")
    if len(names) > 1:
        raise RetrainError(f"devices {devices} run different models {names}; retrain each "
                           "model's devices on their own")
    busy = session.exec(select(RetrainRun).where(col(RetrainRun.state).in_(ACTIVE_RUN_STATES)))
    for other in busy:
        taken = sorted(set(other.devices) & set(devices))
        if taken:
            raise RetrainError(f"devices {taken} are in retraining run {other.id} "
                               f"({other.state})")
    group = policy.group if policy else DEFAULT_POLICY
    recent = policy.recent_s if policy else 1800.0
    run = RetrainRun(
        group=group, trigger=trigger, reason=reason[:2000],
        devices=sorted(d.device_id for d in rows if d.active_name), model_name=names[0],
        source=source or (policy.source if policy else TrainingSource.TELEMETRY),
        since=max(since, now - recent) if since is not None else now - recent,
        requested_by=requested_by, created_at=now, updated_at=now,
    )
    session.add(run)
    session.flush()
    extra: dict[str, Any] = {}
    if device_since:
        extra["device_since"] = {d: max(t, run.since or t) for d, t in
                                 sorted(device_since.items()) if d in run.devices}
    _step(run, RetrainState.TRIGGERED, reason, now, trigger=trigger, devices=run.devices,
          **extra)
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


class RetrainLoop:
    """One tick: open runs for devices that trigger, then move every open run one step."""

    def __init__(self, engine: Engine, *, jobs: JobRunner, releases: Releases,
                 wake_rollouts: Callable[[], None]) -> None:
        self._engine = engine
        self._jobs = jobs
        self._releases = releases
        self._wake_rollouts = wake_rollouts

    def __call__(self, now: float, lease: Lease | None = None) -> bool:
        """One tick; each run's step commits under ``lease`` (:mod:`cloud_hub.db.leases`), and
        releases its new version only while it holds it."""
        engine = self._engine
        with session_under(lease, engine) as session:
            self._open_triggered(session, now)
        with Session(engine) as session:
            ids = [r for r in session.exec(select(RetrainRun.id).where(
                col(RetrainRun.state).in_(ACTIVE_RUN_STATES)))]
        for run_id in ids:
            with session_under(lease, engine) as session:
                run = session.get(RetrainRun, run_id)
                if run is None:
                    continue
                try:
                    self._advance(session, run, now)
                except LeaseLost:  # another process runs the loop now: not the run's failure
                    raise
                except Exception as exc:  # one broken run must not hold the others back
                    session.rollback()
                    log.exception("retrain run %s: step failed", run_id)
                    run = session.get(RetrainRun, run_id)
                    if run is not None and run.state in ACTIVE_RUN_STATES:
                        _finish(run, RetrainState.FAILED, f"{type(exc).__name__}: {exc}", now)
                        session.add(run)
                session.commit()
        return False

    # -- triggers -----------------------------------------------------------------------------
    def _open_triggered(self, session: Session, now: float) -> None:
        policies = {p.group: p for p in session.exec(select(RetrainPolicy))}
        if not any(p.enabled for p in policies.values()):
            return
        runs = list(session.exec(select(RetrainRun)))
        busy = {d for r in runs if r.state in ACTIVE_RUN_STATES for d in r.devices}
        ended: dict[str, float] = {}
        for r in runs:
            if r.finished_at is not None:
                for d in r.devices:
                    ended[d] = max(ended.get(d, 0.0), r.finished_at)
        fired: dict[tuple[str, str], list[Trigger]] = {}
        devices_of: dict[tuple[str, str], list[str]] = {}
        drifting: dict[tuple[str, str], list[Trigger]] = {}  # in drift for half the hold
        for drift, device in session.exec(
                select(DeviceDrift, Device).join(Device, col(Device.device_id)
                                                 == col(DeviceDrift.device_id))):
            policy = policy_for(policies, device.group)
            if policy is None or not policy.enabled or not device.active_name:
                continue
            key = (policy.group, device.active_name)
            devices_of.setdefault(key, []).append(device.device_id)
            state = _state(drift, device, busy, ended)
            rules = PolicyRules(
                drift_hold_s=policy.drift_hold_s,
                max_anomaly_rate_ratio=policy.max_anomaly_rate_ratio,
                min_anomaly_windows=policy.min_anomaly_windows, cooldown_s=policy.cooldown_s,
            )
            trigger = device_trigger(state, rules, now=now)
            if trigger is not None:
                fired.setdefault(key, []).append(trigger)
            # half the hold: a drift that has lasted a while, not a transient that may clear
            in_drift = device_trigger(state, replace(rules, drift_hold_s=rules.drift_hold_s / 2,
                                                     max_anomaly_rate_ratio=None), now=now)
            if in_drift is not None:
                drifting.setdefault(key, []).append(in_drift)
        for key, triggers in fired.items():
            policy = policies[key[0]]
            # The devices of the group (policy) and model that have been in drift for at least
            # half the hold join the run
            # of those whose drift is held: one model learns the new regime from all their
            # readings since each one's drift began, and one rollout carries it to them
            # (runs of one device each would train on one device and contend for one rollout)
            fired_ids = {t.device_id for t in triggers}
            joining = [t for t in drifting.get(key, []) if t.device_id not in fired_ids]
            if policy.scope == RetrainScope.DRIFTED:
                devices = sorted(fired_ids | {t.device_id for t in joining})
            else:
                devices = [d for d in devices_of[key] if d not in busy]
            device_since = {t.device_id: t.since for t in [*triggers, *drifting.get(key, [])]
                            if t.since is not None and t.device_id in devices}
            kinds = [t.kind for t in triggers]
            starts = list(device_since.values())
            reason = "; ".join(t.reason for t in triggers[:5]) + (
                f"; and {len(triggers) - 5} more" if len(triggers) > 5 else "") + (
                f"; in drift too: {', '.join(t.device_id for t in joining)}" if joining
                and policy.scope == RetrainScope.DRIFTED else "")
            try:
                open_run(session, devices=devices, trigger=max(set(kinds), key=kinds.count),
                         reason=reason, now=now, policy=policy,
                         since=min(starts) if starts else None,
                         device_since=device_since or None)
            except RetrainError as exc:
                session.rollback()
                log.warning("retrain policy %r: %s", key[0], exc)

    # -- steps --------------------------------------------------------------------------------
    def _advance(self, session: Session, run: RetrainRun, now: float) -> None:
        if run.state == RetrainState.TRIGGERED:
            self._train(session, run, now)
        elif run.state == RetrainState.TRAINING:
            self._after_training(session, run, now)
        elif run.state == RetrainState.CANARY:
            self._after_canary(session, run, now)
        session.add(run)

    def _policy(self, session: Session, run: RetrainRun) -> RetrainPolicy | None:
        return session.get(RetrainPolicy, run.group) or session.get(RetrainPolicy,
                                                                    DEFAULT_POLICY)

    def _train(self, session: Session, run: RetrainRun, now: float) -> None:
        current = _current_version(session, run)
        spec = {k: v for k, v in (current.spec if current else {}).items()}
        policy = self._policy(session, run)
        spec.update((policy.spec if policy else None) or {})
        if run.source == TrainingSource.FEDERATED:
            request = TrainingRequest(name=run.model_name, spec=spec, federated=FederatedSet(
                devices=run.devices, since=run.since, until=now))
            what = "their federated statistics (no readings)"
        else:
            starts = run.steps[0].get("device_since") if run.steps else None
            request = TrainingRequest(name=run.model_name, devices=run.devices, since=run.since,
                                      until=now, spec=spec, exclude_anomalies=True,
                                      device_since=starts or None)
            what = ("their readings judged normal (windows of anomaly events left out)"
                    + (", each from its drift on" if starts else ""))
        # the job and the run's move to TRAINING commit together: a tick whose commit is
        # refused (its lease lost) leaves neither, so the next holder queues the job once
        job = self._jobs.add(session, name=run.model_name, request=request)
        run.until = now
        run.training_job_id = job.id
        run.state = RetrainState.TRAINING
        span = now - (run.since or now)
        _step(run, RetrainState.TRAINING, f"training job {job.id}: {run.model_name} on "
              f"{len(run.devices)} device(s), {what}, the last {span:.0f} s; spec of "
              f"{run.model_name} v{current.version if current else '?'}", now,
              training_job_id=job.id)

    def _after_training(self, session: Session, run: RetrainRun, now: float) -> None:
        job = session.get(TrainingJob, run.training_job_id) if run.training_job_id else None
        if job is None:
            _finish(run, RetrainState.FAILED, "its training job is gone", now)
            return
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return
        if job.model_version is not None:
            run.model_version = job.model_version
        if job.status != JobStatus.SUCCEEDED:
            step = RetrainState.FAILED
            reason = f"training job {job.id} {job.status}: {job.error or 'no reason given'}"
            if job.error and "parity gate" in job.error:
                reason = f"parity gate refused the new model: {job.error}"
            _finish(run, step, reason, now)
            return
        record = session.exec(select(ModelVersion).where(
            ModelVersion.name == run.model_name, ModelVersion.version == job.model_version)).one()
        parity = record.parity or {}
        _step(run, "parity_gate", f"{run.model_name} v{record.version} passed the parity gate: "
              f"decision agreement {parity.get('decision_agreement')} >= "
              f"{parity.get('min_agreement')} ({record.quantization})", now,
              model_version=record.version)
        try:
            released = publish_model(session, name=run.model_name, version=record.version,
                                     releases=self._releases)
        except PublishRefused as exc:
            _finish(run, RetrainState.FAILED, f"release refused: {exc}", now)
            return
        _step(run, "released", f"{run.model_name} v{released.version} signed and published",
              now, release=(released.manifest or {}).get("release"))
        policy = self._policy(session, run)
        try:
            rollout = create_rollout(session, name=run.model_name, version=record.version,
                                     target=RolloutTarget(devices=run.devices),
                                     policy=rollout_policy(policy))
        except (RolloutConflict, RolloutPlanError, PublishRefused) as exc:
            _finish(run, RetrainState.FAILED, f"canary rollout refused: {exc}", now)
            return
        run.rollout_id = rollout.id
        run.state = RetrainState.CANARY
        stages = rollout.stages
        _step(run, RetrainState.CANARY, f"rollout {rollout.id}: canary "
              f"{', '.join(stages[0])}, then {len(stages) - 1} wave(s); judged on install "
              f"failures and on the canary's "
              f"anomaly rate against the previous model's", now, rollout_id=rollout.id)
        self._wake_rollouts()

    def _after_canary(self, session: Session, run: RetrainRun, now: float) -> None:
        rollout = session.get(Rollout, run.rollout_id) if run.rollout_id else None
        if rollout is None:
            _finish(run, RetrainState.FAILED, "its rollout is gone", now)
        elif rollout.status == RolloutStatus.SUCCEEDED:
            _finish(run, RetrainState.PROMOTED, f"rollout {rollout.id} succeeded: {run.model_name} "
                    f"v{run.model_version} runs on {len(run.devices)} device(s)", now)
        elif rollout.status == RolloutStatus.ROLLED_BACK:
            _finish(run, RetrainState.ROLLED_BACK,
                    f"rollout {rollout.id} rolled back: {rollout.reason}", now)
        elif rollout.status == RolloutStatus.ABORTED:
            _finish(run, RetrainState.FAILED,
                    f"rollout {rollout.id} aborted: {rollout.reason}", now)


def _state(drift: DeviceDrift, device: Device, busy: set[str],
           ended: dict[str, float]) -> DeviceDriftState:
    return DeviceDriftState(
        device_id=device.device_id, state=drift.state, since=drift.since,
        drifting=list(drift.drifting), period_end=drift.period_end, windows=drift.windows,
        anomalies=drift.anomalies, baseline_windows=drift.baseline_windows,
        baseline_anomalies=drift.baseline_anomalies,
        summary_model=(drift.model_name, drift.model_version)
        if drift.model_name and drift.model_version else None,
        active_model=(device.active_name, device.active_version)
        if device.active_name and device.active_version else None,
        busy=device.device_id in busy, last_run_ended_at=ended.get(device.device_id),
        updated_at=drift.updated_at,
    )


def _current_version(session: Session, run: RetrainRun) -> ModelVersion | None:
    """The version most of the run's devices run now (its spec is the new model's)."""
    versions = [d.active_version for d in session.exec(select(Device).where(
        col(Device.device_id).in_(run.devices))) if d.active_name == run.model_name]
    if not versions:
        return None
    version = max(set(versions), key=lambda v: (versions.count(v), v or 0))
    return session.exec(select(ModelVersion).where(
        ModelVersion.name == run.model_name, ModelVersion.version == version)).first()

