"""Which webhook rules an incident matches, and queuing their deliveries.

Deliveries are rows written in the caller's transaction (the incident change and its
notifications commit together), sent later by :mod:`cloud_hub.notify.sender`. A rule gets
``incident.opened`` once, as soon as the incident matches it (its peak score may reach the
rule's minimum after it opened), and ``incident.resolved`` only if it got the opening; an
incident that was over before it matched sends nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from sqlmodel import Session, col, select

from cloud_hub.core.states import IncidentState, WebhookEvent
from cloud_hub.db.ops_tables import Incident, WebhookDelivery, WebhookRule
from cloud_hub.db.tables import Device
from cloud_hub.incidents.views import incident_view

__all__ = ["OPENED", "RESOLVED", "matches", "queue_notifications"]

OPENED = WebhookEvent.INCIDENT_OPENED
RESOLVED = WebhookEvent.INCIDENT_RESOLVED


def matches(rule: WebhookRule, incident: Incident, device: Device | None) -> bool:
    if not rule.enabled:
        return False
    if rule.group is not None and (device is None or device.group != rule.group):
        return False
    if rule.tag is not None and (device is None or rule.tag not in (device.tags or [])):
        return False
    if rule.min_score is not None and incident.peak_score < rule.min_score:
        return False
    return rule.fault_class is None or incident.fault_class == rule.fault_class


def _body(event: WebhookEvent, incident: Incident, device: Device | None, rule: WebhookRule,
          now: float) -> str:
    payload: dict[str, Any] = {
        "event": event, "created_at": now, "rule": {"id": rule.id, "name": rule.name},
        "incident": incident_view(incident),
        "device": {"device_id": incident.device_id,
                   "group": device.group if device else None,
                   "tags": list(device.tags or []) if device else []},
        "console_path": f"/ui/incidents/{incident.id}",
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def queue_notifications(session: Session, incidents: Iterable[Incident],
                        now: float | None = None) -> int:
    """Queue what these (just changed, flushed) incidents owe each rule; returns how many."""
    changed = [i for i in incidents if i.id is not None]
    if not changed:
        return 0
    rules = list(session.exec(select(WebhookRule).where(col(WebhookRule.enabled).is_(True))))
    if not rules:
        return 0
    at = time.time() if now is None else now
    ids = [i.id for i in changed]
    sent: set[tuple[int, int, str]] = {
        (r, i, e) for r, i, e in session.exec(
            select(WebhookDelivery.rule_id, WebhookDelivery.incident_id, WebhookDelivery.event)
            .where(col(WebhookDelivery.incident_id).in_(ids)))
    }
    devices = {d.device_id: d for d in session.exec(
        select(Device).where(col(Device.device_id).in_({i.device_id for i in changed})))}
    queued = 0
    for incident in changed:
        assert incident.id is not None
        device = devices.get(incident.device_id)
        for rule in rules:
            assert rule.id is not None
            opened = (rule.id, incident.id, OPENED) in sent
            if not opened and incident.state == IncidentState.RESOLVED:
                continue  # over before it matched (or before the rule existed): no news
            if not opened and matches(rule, incident, device):
                events = [OPENED]
                opened = True
            else:
                events = []
            if (incident.state == IncidentState.RESOLVED and opened
                    and (rule.id, incident.id, RESOLVED) not in sent):
                events.append(RESOLVED)
            for event in events:
                session.add(WebhookDelivery(
                    rule_id=rule.id, incident_id=incident.id, event=event,
                    body=_body(event, incident, device, rule, at), next_attempt_at=at,
                    created_at=at))
                sent.add((rule.id, incident.id, event))
                queued += 1
    return queued
