"""Incidents and their events as JSON-ready dicts (REST API, webhooks, console)."""

from __future__ import annotations

from typing import Any

from cloud_hub.db.ops_tables import Incident
from cloud_hub.db.tables import Anomaly

__all__ = ["event_view", "incident_view"]


def incident_view(i: Incident) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": i.id, "device_id": i.device_id, "state": i.state,
        "started_at": i.started_at, "ended_at": i.ended_at, "opened_at": i.opened_at,
        "last_event_at": i.last_event_at, "updated_at": i.updated_at, "events": i.events,
        "peak_score": i.peak_score, "threshold": i.peak_threshold, "channels": i.channels,
        "model": {"name": i.model_name, "version": i.model_version},
        "acknowledged_by": i.acknowledged_by, "acknowledged_at": i.acknowledged_at,
        "ack_note": i.ack_note, "resolved_by": i.resolved_by, "resolved_at": i.resolved_at,
        "resolve_note": i.resolve_note,
    }
    # Only once events carry them: absent, not null, when unknown.
    if i.fault_class is not None:
        view["fault_class"] = i.fault_class
    if i.rul_s is not None:
        view["rul_s"] = i.rul_s
    return view


def event_view(a: Anomaly) -> dict[str, Any]:
    view: dict[str, Any] = {
        "device_id": a.device_id, "seq": a.seq, "ts_start": a.ts_start, "ts_end": a.ts_end,
        "score": a.score, "threshold": a.threshold,
        "model": {"name": a.model_name, "version": a.model_version},
        "channels": list(a.channels), "detected_at": a.detected_at, "stored_at": a.stored_at,
        "incident_id": a.incident_id,
    }
    for optional in ("fault_class", "rul_s"):
        value = getattr(a, optional, None)
        if value is not None:
            view[optional] = value
    return view
