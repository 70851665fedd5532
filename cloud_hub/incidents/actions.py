"""What an operator does to an incident: acknowledge it, resolve it (with who and a note).

The REST API and the console both call these, so both apply the same checks.
"""

from __future__ import annotations

import time

from sqlmodel import Session

from cloud_hub.core.states import IncidentState
from cloud_hub.db.ops_tables import Incident
from cloud_hub.notify.rules import queue_notifications

__all__ = ["IncidentConflict", "IncidentNotFound", "acknowledge", "get_incident", "resolve"]

MAX_NOTE = 2000


class IncidentNotFound(LookupError):
    def __init__(self, incident_id: int) -> None:
        super().__init__(f"incident {incident_id} does not exist")


class IncidentConflict(RuntimeError):
    """The action does not fit the incident's state."""


def get_incident(session: Session, incident_id: int) -> Incident:
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


def _note(note: str | None) -> str | None:
    text = (note or "").strip()
    if len(text) > MAX_NOTE:
        raise ValueError(f"note of {len(text)} characters exceeds {MAX_NOTE}")
    return text or None


def acknowledge(session: Session, incident_id: int, *, by: str, note: str | None) -> Incident:
    text = _note(note)
    incident = get_incident(session, incident_id)
    if incident.state != IncidentState.OPEN:
        raise IncidentConflict(f"incident {incident_id} is {incident.state}; only an open "
                               "incident can be acknowledged")
    now = time.time()
    incident.state, incident.acknowledged_by, incident.acknowledged_at = (
        IncidentState.ACKNOWLEDGED, by, now)
    incident.ack_note = text
    incident.updated_at = now
    session.add(incident)
    session.commit()
    session.refresh(incident)
    return incident


def resolve(session: Session, incident_id: int, *, by: str, note: str | None) -> Incident:
    text = _note(note)
    incident = get_incident(session, incident_id)
    if incident.state == IncidentState.RESOLVED:
        raise IncidentConflict(f"incident {incident_id} is already resolved")
    now = time.time()
    incident.state, incident.resolved_by, incident.resolved_at = IncidentState.RESOLVED, by, now
    incident.resolve_note = text
    incident.updated_at = now
    session.add(incident)
    session.flush()
    queue_notifications(session, [incident], now)
    session.commit()
    session.refresh(incident)
    return incident
