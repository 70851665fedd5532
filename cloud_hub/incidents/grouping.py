"""Grouping anomaly events into incidents, and resolving incidents that went quiet.

An event joins its device's latest incident that is not resolved when its window starts within
``gap_s`` (device time) of that incident's windows; otherwise it opens a new incident. An
incident nobody resolved is resolved automatically once no event of it was stored for
``quiet_s`` (hub time). A resolved incident stays closed: a later event opens a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlmodel import Session, col, select

from cloud_hub.core.states import IncidentState
from cloud_hub.db.ops_tables import Incident
from cloud_hub.db.tables import Anomaly

__all__ = ["GroupingPolicy", "GroupingResult", "group_pending", "resolve_quiet"]

AUTO_RESOLVER = "auto"


@dataclass(frozen=True)
class GroupingPolicy:
    gap_s: float = 60.0
    quiet_s: float = 300.0
    batch: int = 1000


@dataclass
class GroupingResult:
    events: int = 0
    opened: list[Incident] = field(default_factory=list)
    updated: list[Incident] = field(default_factory=list)


def _latest_unresolved(session: Session, device_ids: Sequence[str]) -> dict[str, Incident]:
    newest = (
        select(Incident.device_id, func.max(Incident.id).label("id"))
        .where(col(Incident.device_id).in_(device_ids), Incident.state != IncidentState.RESOLVED)
        .group_by(col(Incident.device_id))
        .subquery()
    )
    rows = session.exec(select(Incident).join(newest, col(Incident.id) == newest.c.id))
    return {i.device_id: i for i in rows}


def _open(a: Anomaly, now: float) -> Incident:
    return Incident(
        device_id=a.device_id, state=IncidentState.OPEN, started_at=a.ts_start, ended_at=a.ts_end,
        opened_at=a.stored_at, last_event_at=a.stored_at, updated_at=now, events=0,
        peak_score=a.score, peak_threshold=a.threshold, channel_counts={},
        model_name=a.model_name, model_version=a.model_version,
    )


def _joins(incident: Incident, a: Anomaly, gap_s: float) -> bool:
    return a.ts_start <= incident.ended_at + gap_s and a.ts_end >= incident.started_at - gap_s


def _add(incident: Incident, a: Anomaly, now: float) -> None:
    incident.events += 1
    incident.started_at = min(incident.started_at, a.ts_start)
    incident.ended_at = max(incident.ended_at, a.ts_end)
    incident.last_event_at = max(incident.last_event_at, a.stored_at)
    incident.updated_at = now
    if a.score > incident.peak_score:
        incident.peak_score, incident.peak_threshold = a.score, a.threshold
    counts = dict(incident.channel_counts or {})
    for channel in a.channels:
        counts[channel] = counts.get(channel, 0) + 1
    incident.channel_counts = counts  # a new dict, so the JSON column is written
    incident.model_name, incident.model_version = a.model_name, a.model_version
    fault_class = getattr(a, "fault_class", None)  # once events carry a classification
    if fault_class:
        incident.fault_class = fault_class
    rul = getattr(a, "rul_s", None)
    if rul is not None:
        incident.rul_s = rul


def group_pending(session: Session, policy: GroupingPolicy, now: float) -> GroupingResult:
    """Assign up to ``policy.batch`` ungrouped events (oldest stored first); does not commit."""
    pending = list(session.exec(
        select(Anomaly).where(col(Anomaly.incident_id).is_(None))
        .order_by(col(Anomaly.stored_at), col(Anomaly.device_id), col(Anomaly.ts_start))
        .limit(policy.batch)
    ))
    result = GroupingResult(events=len(pending))
    if not pending:
        return result
    current = _latest_unresolved(session, sorted({a.device_id for a in pending}))
    opened_ids: set[int] = set()
    touched: dict[int, Incident] = {}
    for a in sorted(pending, key=lambda e: (e.device_id, e.ts_start, e.seq)):
        incident = current.get(a.device_id)
        if incident is None or not _joins(incident, a, policy.gap_s):
            incident = _open(a, now)
            session.add(incident)
            session.flush()  # its id, for the events
            assert incident.id is not None
            opened_ids.add(incident.id)
            current[a.device_id] = incident
            result.opened.append(incident)
        _add(incident, a, now)
        assert incident.id is not None
        touched[incident.id] = incident
        a.incident_id = incident.id
        session.add(a)
        session.add(incident)
    result.updated = [i for k, i in touched.items() if k not in opened_ids]
    session.flush()
    return result


def resolve_quiet(session: Session, policy: GroupingPolicy, now: float) -> list[Incident]:
    """Resolve incidents with no event stored for ``quiet_s``; does not commit."""
    quiet = list(session.exec(
        select(Incident).where(Incident.state != IncidentState.RESOLVED,
                               Incident.last_event_at < now - policy.quiet_s)
        .order_by(col(Incident.id)).limit(policy.batch)
    ))
    for incident in quiet:
        incident.state = IncidentState.RESOLVED
        incident.resolved_by, incident.resolved_at = AUTO_RESOLVER, now
        incident.resolve_note = f"no anomaly for {policy.quiet_s:g} s"
        incident.updated_at = now
        session.add(incident)
    session.flush()
    return quiet
