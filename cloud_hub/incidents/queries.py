"""Read side of incidents and events: filtered, newest first, paginated in SQL.

The REST API pages with a keyset cursor (:mod:`cloud_hub.db.paging`); the console shows page
numbers, so it gets an offset page with the total count (:class:`Listing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import func
from sqlmodel import Session, col, select

from cloud_hub.core.states import IncidentState
from cloud_hub.db.ops_tables import Incident, WebhookDelivery
from cloud_hub.db.paging import Key, Page, keyset_page
from cloud_hub.db.tables import Anomaly

__all__ = ["Listing", "count_by_state", "deliveries_page", "incident_events", "incidents_page",
           "list_deliveries", "list_events", "list_incidents"]

T = TypeVar("T")


@dataclass(frozen=True)
class Listing(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.items) < self.total


def list_incidents(
    session: Session, *, state: str | None = None, device_id: str | None = None,
    limit: int = 50, offset: int = 0,
) -> Listing[Incident]:
    stmt = _incident_filter(select(Incident), state, device_id)
    count = _incident_filter(select(func.count()).select_from(Incident), state, device_id)
    rows = session.exec(stmt.order_by(col(Incident.id).desc()).offset(offset).limit(limit))
    return Listing(list(rows), int(session.exec(count).one()), limit, offset)


def count_by_state(session: Session) -> dict[str, int]:
    rows = session.exec(select(Incident.state, func.count()).group_by(col(Incident.state)))
    counts: dict[str, int] = dict.fromkeys(IncidentState, 0)
    counts.update({state: int(n) for state, n in rows})
    return counts


def incident_events(session: Session, incident_id: int, *, limit: int = 500) -> list[Anomaly]:
    """The incident's events in device time order (the first ``limit``)."""
    return list(session.exec(
        select(Anomaly).where(Anomaly.incident_id == incident_id)
        .order_by(col(Anomaly.ts_start), col(Anomaly.seq)).limit(limit)))


def list_events(
    session: Session, *, device_id: str | None = None, limit: int = 50, offset: int = 0,
) -> Listing[Anomaly]:
    """Anomaly events, the latest stored first."""
    stmt = select(Anomaly)
    count = select(func.count()).select_from(Anomaly)
    if device_id is not None:
        stmt = stmt.where(Anomaly.device_id == device_id)
        count = count.where(Anomaly.device_id == device_id)
    stmt = stmt.order_by(col(Anomaly.stored_at).desc(), col(Anomaly.device_id),
                         col(Anomaly.seq).desc())
    rows = session.exec(stmt.offset(offset).limit(limit))
    return Listing(list(rows), int(session.exec(count).one()), limit, offset)


def list_deliveries(
    session: Session, *, status: str | None = None, rule_id: int | None = None,
    incident_id: int | None = None, limit: int = 50, offset: int = 0,
) -> Listing[WebhookDelivery]:
    stmt = select(WebhookDelivery)
    count = select(func.count()).select_from(WebhookDelivery)
    for column, value in ((WebhookDelivery.status, status), (WebhookDelivery.rule_id, rule_id),
                          (WebhookDelivery.incident_id, incident_id)):
        if value is not None:
            stmt, count = stmt.where(column == value), count.where(column == value)
    rows = session.exec(stmt.order_by(col(WebhookDelivery.id).desc()).offset(offset).limit(limit))
    return Listing(list(rows), int(session.exec(count).one()), limit, offset)


def _incident_filter(stmt: Any, state: str | None, device_id: str | None) -> Any:
    if state == "active":  # open or acknowledged
        stmt = stmt.where(Incident.state != IncidentState.RESOLVED)
    elif state is not None:
        stmt = stmt.where(Incident.state == state)
    if device_id is not None:
        stmt = stmt.where(Incident.device_id == device_id)
    return stmt


def incidents_page(
    session: Session, *, state: str | None = None, device_id: str | None = None,
    limit: int = 50, after: Key | None = None,
) -> Page[Incident]:
    """Newest first (by id), after the cursor's key."""
    stmt = _incident_filter(select(Incident), state, device_id)
    return keyset_page(session, stmt, order=[col(Incident.id)], limit=limit, after=after,
                       descending=True)


def deliveries_page(
    session: Session, *, status: str | None = None, rule_id: int | None = None,
    incident_id: int | None = None, limit: int = 50, after: Key | None = None,
) -> Page[WebhookDelivery]:
    """Newest first (by id), after the cursor's key."""
    stmt = select(WebhookDelivery)
    for column, value in ((WebhookDelivery.status, status), (WebhookDelivery.rule_id, rule_id),
                          (WebhookDelivery.incident_id, incident_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    return keyset_page(session, stmt, order=[col(WebhookDelivery.id)], limit=limit,
                       after=after, descending=True)
