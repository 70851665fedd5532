"""What the REST API and the CLI show of drift: the fleet view, a device's summaries, runs."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from cloud_hub.db.drift_tables import DeviceDrift, DriftSummaryRow, RetrainPolicy, RetrainRun
from cloud_hub.db.paging import Key, Page, keyset_page
from cloud_hub.db.tables import Device
from shared.messages import DriftState

__all__ = ["device_drift_view", "drift_page", "policy_view", "run_view", "summary_view"]


def _rate(anomalies: int, windows: int) -> float | None:
    return anomalies / windows if windows else None


def device_drift_view(drift: DeviceDrift, device: Device | None) -> dict[str, Any]:
    rate = _rate(drift.anomalies, drift.windows)
    base = _rate(drift.baseline_anomalies, drift.baseline_windows)
    return {
        "device_id": drift.device_id, "group": device.group if device else None,
        "state": drift.state, "since": drift.since, "channels": list(drift.drifting),
        "held_s": drift.period_end - drift.since
        if drift.state == DriftState.DRIFT and drift.since is not None else None,
        "anomaly_rate": rate, "baseline_anomaly_rate": base,
        "anomaly_rate_ratio": rate / base if rate is not None and base else None,
        "windows": drift.windows, "anomalies": drift.anomalies, "detections": drift.detections,
        "model": {"name": drift.model_name, "version": drift.model_version}
        if drift.model_name else None,
        "active_model": {"name": device.active_name, "version": device.active_version}
        if device and device.active_name else None,
        "period_end": drift.period_end, "updated_at": drift.updated_at,
    }


def drift_page(session: Session, *, group: str | None, state: str | None, limit: int,
               after: Key | None) -> Page[dict[str, Any]]:
    """A page of the fleet drift view, by device id."""
    stmt = select(DeviceDrift)
    if state:
        stmt = stmt.where(DeviceDrift.state == state)
    if group:
        stmt = stmt.where(col(DeviceDrift.device_id).in_(
            select(Device.device_id).where(Device.group == group)))
    page = keyset_page(session, stmt, order=[col(DeviceDrift.device_id)], limit=limit,
                       after=after)
    devices = {d.device_id: d for d in session.exec(select(Device).where(
        col(Device.device_id).in_([r.device_id for r in page.rows])))}
    return Page([device_drift_view(r, devices.get(r.device_id)) for r in page.rows],
                page.next_key)


def summary_view(row: DriftSummaryRow) -> dict[str, Any]:
    training = row.training or {}
    return {
        "epoch": row.epoch, "seq": row.seq, "start": row.period_start, "end": row.period_end,
        "state": row.state, "since": row.since, "drifting": list(row.drifting),
        "model": {"name": row.model_name, "version": row.model_version}
        if row.model_name else None,
        "readings": row.readings, "windows": row.windows, "anomalies": row.anomalies,
        "baseline_windows": row.baseline_windows,
        "baseline_anomalies": row.baseline_anomalies, "detections": row.detections,
        "channels": row.channels, "score": row.score,
        "training_windows": training.get("windows"), "stored_at": row.stored_at,
    }


def run_view(run: RetrainRun) -> dict[str, Any]:
    return {
        "id": run.id, "group": run.group, "trigger": run.trigger, "reason": run.reason,
        "devices": run.devices, "state": run.state, "source": run.source,
        "model": {"name": run.model_name, "version": run.model_version},
        "training_job_id": run.training_job_id, "rollout_id": run.rollout_id,
        "since": run.since, "until": run.until, "steps": run.steps,
        "requested_by": run.requested_by, "created_at": run.created_at,
        "updated_at": run.updated_at, "finished_at": run.finished_at,
    }


def policy_view(policy: RetrainPolicy) -> dict[str, Any]:
    return {k: getattr(policy, k) for k in (
        "group", "enabled", "drift_hold_s", "max_anomaly_rate_ratio", "min_anomaly_windows",
        "scope", "source", "recent_s", "cooldown_s", "spec", "rollout", "updated_at")}
