"""What a rollout's stage did, as the rollout controller judges it.

:func:`observe_stage` marks the stage's devices that now run the new version (or report
they failed to install it) and says what each did since, with its anomaly events for the
canary; :func:`baseline_rates` measures the canary's anomaly rate under its previous model,
which the stage's rate is judged against (:func:`~cloud_hub.rollouts.policy.judge_stage`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Table, bindparam, func
from sqlalchemy import select as core_select
from sqlalchemy import update as core_update
from sqlmodel import Session, col, select

from cloud_hub.db.registry_tables import Rollout, RolloutDevice
from cloud_hub.db.tables import Anomaly, Device, TelemetryBatchRow
from cloud_hub.rollouts.policy import DeviceObservation
from shared.messages import ModelState

__all__ = ["BASELINE_WINDOW_S", "baseline_rates", "observe_stage"]

_DEVICES: Table = Device.__table__  # type: ignore[attr-defined]
_MEMBERS: Table = RolloutDevice.__table__  # type: ignore[attr-defined]
_FAILED_STATES = (ModelState.FAILED, ModelState.ROLLED_BACK)
BASELINE_WINDOW_S = 600.0


@dataclass(slots=True)
class _Member:
    """The columns of a stage's device that a tick judges (a ``rollout_devices`` row)."""

    device_id: str
    desired_at: float | None
    confirmed_at: float | None
    failed_at: float | None
    failure: str | None
    baseline_rate: float | None


def observe_stage(session: Session, rollout: Rollout, now: float) -> list[DeviceObservation]:
    """Mark the stage's devices that now run the model (or failed to), and say what each
    did. Members and devices are read as column rows and the marks written in one UPDATE:
    a 1,000-device stage loaded as ORM objects (and expired at every commit) on each tick
    was most of the hub's CPU during a rollout (py-spy), and ingest wakes the controller
    after each commit."""
    r = _MEMBERS.c
    members = [_Member(*row) for row in session.connection().execute(
        core_select(r.device_id, r.desired_at, r.confirmed_at, r.failed_at, r.failure,
                    r.baseline_rate).where(r.rollout_id == rollout.id,
                                           r.stage == rollout.stage))]
    ids = [m.device_id for m in members]
    pending = [m.device_id for m in members
               if m.confirmed_at is None and m.failed_at is None]
    c = _DEVICES.c
    devices = {row.device_id: row for row in session.connection().execute(
        core_select(c.device_id, c.active_name, c.active_version, c.reported_name,
                    c.reported_version, c.reported_state, c.reported_since,
                    c.reported_error).where(c.device_id.in_(pending)))} if pending else {}
    name, version = rollout.model_name, rollout.model_version
    marks: list[dict[str, object]] = []
    for m in members:
        device = devices.get(m.device_id)
        if device is None:
            continue
        if (device.active_name, device.active_version) == (name, version):
            m.confirmed_at = now
        elif ((device.reported_name, device.reported_version) == (name, version)
              and device.reported_state in _FAILED_STATES
              and (device.reported_since or 0) >= (m.desired_at or 0) - 1.0):
            m.failed_at = now
            m.failure = f"{device.reported_state}: {device.reported_error or 'no reason'}"
        else:
            continue
        marks.append({"member": m.device_id, "confirmed": m.confirmed_at,
                      "failed": m.failed_at, "failure": m.failure})
    if marks:
        session.connection().execute(
            core_update(_MEMBERS).where(r.rollout_id == rollout.id,
                                        r.device_id == bindparam("member"))
            .values(confirmed_at=bindparam("confirmed"), failed_at=bindparam("failed"),
                    failure=bindparam("failure")), marks)
    counts: dict[str, int] = {}
    if rollout.stage == 0:  # only the canary is judged on its anomaly rate
        since = min((m.confirmed_at for m in members if m.confirmed_at), default=now)
        rows = session.exec(
            select(Anomaly.device_id, Anomaly.stored_at).where(
                col(Anomaly.device_id).in_(ids), Anomaly.model_name == name,
                Anomaly.model_version == version, Anomaly.stored_at >= since))
        confirmed = {m.device_id: m.confirmed_at for m in members}
        for device_id, stored_at in rows:
            start = confirmed.get(device_id)
            if start is not None and stored_at >= start:
                counts[device_id] = counts.get(device_id, 0) + 1
    return [
        DeviceObservation(
            device_id=m.device_id, confirmed_at=m.confirmed_at, failed=m.failure,
            baseline_rate=m.baseline_rate or 0.0,
            anomalies_since_confirmed=counts.get(m.device_id, 0),
        )
        for m in members
    ]


def baseline_rates(session: Session, members: list[RolloutDevice],
                    now: float) -> dict[str, float]:
    """Anomaly events per minute of each device under its previous model (0 if none ran).

    The window is the last ``BASELINE_WINDOW_S`` seconds, or less for a device whose first
    telemetry is more recent.
    """
    ids = [m.device_id for m in members if m.previous_name]
    if not ids:
        return {}
    first_seen = dict(session.exec(
        select(TelemetryBatchRow.device_id, func.min(TelemetryBatchRow.stored_at))
        .where(col(TelemetryBatchRow.device_id).in_(ids))
        .group_by(TelemetryBatchRow.device_id)).all())
    counts: dict[tuple[str, str, int], int] = {}
    for device_id, name, version, n in session.exec(
        select(Anomaly.device_id, Anomaly.model_name, Anomaly.model_version, func.count())
        .where(col(Anomaly.device_id).in_(ids), Anomaly.stored_at >= now - BASELINE_WINDOW_S)
        .group_by(col(Anomaly.device_id), col(Anomaly.model_name), col(Anomaly.model_version))
    ):
        counts[(device_id, name, version)] = int(n)
    rates: dict[str, float] = {}
    for m in members:
        first = first_seen.get(m.device_id)
        if not m.previous_name or m.previous_version is None or first is None:
            continue
        window = min(BASELINE_WINDOW_S, now - first)
        if window > 1.0:
            n = counts.get((m.device_id, m.previous_name, m.previous_version), 0)
            rates[m.device_id] = n / (window / 60.0)
    return rates
