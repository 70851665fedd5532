"""Drift summaries into the store: the summary rows and each device's latest drift state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from cloud_hub.db.drift_tables import DeviceDrift
from shared.messages import DriftSummary

__all__ = ["drift_row", "store_drift"]


def drift_row(d: DriftSummary, stored_at: float) -> dict[str, Any]:
    """The ``drift_summaries`` row of one summary."""
    return {
        "device_id": d.device_id, "epoch": d.epoch, "seq": d.seq, "period_start": d.start,
        "period_end": d.end, "state": d.state.value, "since": d.since,
        "drifting": list(d.drifting),
        "model_name": d.model.name if d.model else None,
        "model_version": d.model.version if d.model else None,
        "readings": d.readings, "windows": d.windows, "anomalies": d.anomalies,
        "baseline_windows": d.baseline_windows, "baseline_anomalies": d.baseline_anomalies,
        "detections": d.detections, "channels": [c.to_dict() for c in d.channels],
        "score": d.score.to_dict() if d.score else None,
        "training": d.training.to_dict() if d.training else None,
        "has_training": d.training is not None, "stored_at": stored_at,
    }


def store_drift(session: Session, summaries: Sequence[DriftSummary], *, now: float) -> None:
    """Move each device's ``device_drift`` row to its newest summary (by the period's end: a
    summary sent again, or late, never moves it back)."""
    newest: dict[str, DriftSummary] = {}
    for d in summaries:
        if d.device_id not in newest or d.end > newest[d.device_id].end:
            newest[d.device_id] = d
    if not newest:
        return
    rows = {r.device_id: r for r in session.exec(
        select(DeviceDrift).where(col(DeviceDrift.device_id).in_(sorted(newest))))}
    for device_id, d in newest.items():
        row = rows.get(device_id)
        if row is not None and row.period_end >= d.end:
            continue
        if row is None:
            row = DeviceDrift(device_id=device_id, state=d.state, period_start=d.start,
                              period_end=d.end, updated_at=now)
        row.state, row.since, row.drifting = d.state, d.since, list(d.drifting)
        row.model_name = d.model.name if d.model else None
        row.model_version = d.model.version if d.model else None
        row.windows, row.anomalies = d.windows, d.anomalies
        row.baseline_windows, row.baseline_anomalies = d.baseline_windows, d.baseline_anomalies
        row.detections = d.detections
        row.period_start, row.period_end, row.updated_at = d.start, d.end, now
        session.add(row)
