"""The console's read queries: filtered, counted and paginated in SQL."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, literal, or_
from sqlmodel import Session, col, select

from cloud_hub.core.states import DevicePresence, IncidentState, ModelStatus
from cloud_hub.db.ops_tables import Incident
from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.db.tables import Device
from cloud_hub.ui.live import display_state
from shared.messages import ModelState

__all__ = ["FleetFilter", "FleetPage", "fleet_page", "open_incident_counts"]

MODEL_STATES = (ModelState.ACTIVE, ModelState.DOWNLOADING, ModelState.VERIFYING,
                ModelState.SHADOW, ModelState.FAILED, ModelState.ROLLED_BACK)


@dataclass(frozen=True)
class FleetFilter:
    q: str = ""  # part of the device id
    state: str = ""  # online | silent | offline | a reported model state | out-of-sync | incident
    group: str = ""
    tag: str = ""
    model: str = ""  # NAME:VERSION of the active model

    @classmethod
    def from_query(cls, params: dict[str, str]) -> FleetFilter:
        return cls(**{k: params.get(k, "")[:64] for k in ("q", "state", "group", "tag",
                                                           "model")})

    def as_query(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


@dataclass
class FleetPage:
    devices: list[Device]
    total: int
    page: int
    per_page: int
    counts: dict[str, int]
    incidents: dict[str, int]
    states: dict[str, str]
    groups: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _has_tag(session: Session, tag: str) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        elements = func.json_array_elements_text(Device.tags).table_valued("value")
    else:
        elements = func.json_each(Device.tags).table_valued("value")
    return select(literal(1)).select_from(elements).where(elements.c.value == tag).exists()


def _open_incident_exists() -> Any:
    return select(literal(1)).where(Incident.device_id == Device.device_id,
                                    Incident.state != IncidentState.RESOLVED).exists()


def _where(session: Session, stmt: Any, f: FleetFilter, now: float) -> Any:
    if f.q:
        pattern = "%" + f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(col(Device.device_id).like(pattern, escape="\\"))
    if f.state in tuple(DevicePresence):
        stmt = stmt.where(display_state(now) == f.state)
    elif f.state in MODEL_STATES:
        stmt = stmt.where(Device.reported_state == f.state)
    elif f.state == "no-model":
        stmt = stmt.where(col(Device.active_name).is_(None))
    elif f.state == "out-of-sync":
        stmt = stmt.where(col(Device.desired_version).is_not(None), or_(
            col(Device.active_name).is_(None), col(Device.active_name) != Device.desired_name,
            col(Device.active_version) != Device.desired_version))
    elif f.state == "incident":
        stmt = stmt.where(_open_incident_exists())
    if f.group:
        stmt = stmt.where(Device.group == f.group)
    if f.tag:
        stmt = stmt.where(_has_tag(session, f.tag))
    if f.model:
        name, _, version = f.model.rpartition(":")
        if version.isdigit():
            stmt = stmt.where(Device.active_name == name, Device.active_version == int(version))
    return stmt


def fleet_counts(session: Session, now: float) -> dict[str, int]:
    counts: dict[str, int] = {"total": 0, **dict.fromkeys(DevicePresence, 0)}
    presence = display_state(now)  # one expression in both clauses (display_state)
    for state, n in session.exec(select(presence, func.count()).group_by(presence)):
        counts[state] = int(n)
        counts["total"] += int(n)
    for state, n in session.exec(select(Device.reported_state, func.count())
                                 .where(col(Device.reported_state).is_not(None))
                                 .group_by(col(Device.reported_state))):
        counts[str(state)] = int(n)
    counts["out-of-sync"] = int(session.exec(
        _where(session, select(func.count()).select_from(Device),
               FleetFilter(state="out-of-sync"), now)).one())
    counts["incident"] = int(session.exec(
        select(func.count(func.distinct(Incident.device_id))).where(
            Incident.state != IncidentState.RESOLVED)).one())
    return counts


def open_incident_counts(session: Session, device_ids: list[str]) -> dict[str, int]:
    if not device_ids:
        return {}
    rows = session.exec(select(Incident.device_id, func.count()).where(
        col(Incident.device_id).in_(device_ids), Incident.state != IncidentState.RESOLVED)
        .group_by(col(Incident.device_id)))
    return {d: int(n) for d, n in rows}


def _choices(session: Session) -> tuple[list[str], list[str], list[str]]:
    groups = [g for g in session.exec(select(Device.group).where(col(Device.group).is_not(None))
                                      .distinct().order_by(col(Device.group)))]
    if session.get_bind().dialect.name == "postgresql":
        elements = func.json_array_elements_text(Device.tags).table_valued("value")
    else:
        elements = func.json_each(Device.tags).table_valued("value")
    tags = [str(t) for t in session.exec(select(elements.c.value).select_from(Device)
                                         .join(elements, literal(True)).distinct()
                                         .order_by(elements.c.value).limit(200))]
    models = [f"{n}:{v}" for n, v in session.exec(
        select(ModelVersion.name, ModelVersion.version)
        .where(ModelVersion.status != ModelStatus.DRAFT)
        .order_by(col(ModelVersion.name), col(ModelVersion.version).desc()).limit(100))]
    return [str(g) for g in groups], tags, models


def fleet_page(session: Session, f: FleetFilter, *, page: int, per_page: int) -> FleetPage:
    now = time.time()
    total = int(session.exec(_where(session, select(func.count()).select_from(Device), f,
                                    now)).one())
    last_page = max(1, -(-total // per_page))
    page = min(max(1, page), last_page)
    rows = session.exec(
        _where(session, select(Device, display_state(now)), f, now)
        .order_by(col(Device.device_id)).offset((page - 1) * per_page).limit(per_page)).all()
    devices = [d for d, _ in rows]
    groups, tags, models = _choices(session)
    return FleetPage(
        devices=devices, total=total, page=page, per_page=per_page,
        counts=fleet_counts(session, now),
        incidents=open_incident_counts(session, [d.device_id for d in devices]),
        states={d.device_id: s for d, s in rows}, groups=groups, tags=tags, models=models,
    )
