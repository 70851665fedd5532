"""Tables of operations: incidents, webhook rules and deliveries, console sessions, job leases,
the hub processes sharing the database.

An incident groups the anomaly events of one device while they keep coming; the events point at
it through ``anomalies.incident_id``. Webhook deliveries are written in the same transaction as
the incident change they announce (an outbox), and sent by the notifier afterwards.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

from cloud_hub.core.states import (
    DeliveryStatus,
    EnrollmentJobStatus,
    IncidentState,
    WebhookEvent,
)
from cloud_hub.db.types import enum_field

__all__ = ["HubProcessRecord", "Incident", "JobLease", "UiSession", "WebhookDelivery",
           "WebhookRule"]

INCIDENT_STATES = tuple(IncidentState)


class Incident(SQLModel, table=True):
    __tablename__ = "incidents"
    __table_args__ = (
        Index("ix_incidents_device_state", "device_id", "state"),
        Index("ix_incidents_updated", "updated_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    state: IncidentState = enum_field(IncidentState, IncidentState.OPEN, index=True)
    # Device time of the first window's start and the last window's end.
    started_at: float
    ended_at: float
    # Hub time: when the first and the latest event were stored, and of the last change.
    opened_at: float
    last_event_at: float
    updated_at: float
    events: int = 0
    peak_score: float
    peak_threshold: float
    channel_counts: dict[str, int] = Field(default_factory=dict,
                                           sa_column=Column(JSON, nullable=False))
    model_name: str
    model_version: int
    # Filled when the anomaly events carry them (fault classification, remaining useful life).
    fault_class: str | None = Field(default=None, max_length=64)
    rul_s: float | None = None
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    ack_note: str | None = Field(default=None, max_length=2000)
    resolved_by: str | None = None
    resolved_at: float | None = None
    resolve_note: str | None = Field(default=None, max_length=2000)

    @property
    def channels(self) -> list[str]:
        """Channels named by the events, the most frequent first."""
        counts = self.channel_counts or {}
        return sorted(counts, key=lambda c: (-counts[c], c))


class WebhookRule(SQLModel, table=True):
    """Where to send incident notifications, and for which incidents."""

    __tablename__ = "webhook_rules"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    url: str = Field(max_length=2000)
    secret: str = Field(max_length=128)  # HMAC-SHA256 key; the receiver holds the same
    group: str | None = Field(default=None, max_length=64)
    tag: str | None = Field(default=None, max_length=64)
    min_score: float | None = None
    fault_class: str | None = Field(default=None, max_length=64)
    enabled: bool = True
    created_at: float


class WebhookDelivery(SQLModel, table=True):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_rule_incident", "rule_id", "incident_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rule_id: int = Field(foreign_key="webhook_rules.id")
    incident_id: int = Field(foreign_key="incidents.id")
    event: WebhookEvent = enum_field(WebhookEvent)
    body: str  # the exact JSON sent (and signed)
    status: DeliveryStatus = enum_field(DeliveryStatus, DeliveryStatus.PENDING)
    attempts: int = 0
    next_attempt_at: float
    last_error: str | None = Field(default=None, max_length=2000)
    last_status_code: int | None = None
    created_at: float
    delivered_at: float | None = None


class UiSession(SQLModel, table=True):
    """A console login: made from an API key, carried by an HttpOnly cookie.

    Only the sha256 of the cookie's token is stored; the key's scope is read on every request,
    so revoking the key ends its sessions.
    """

    __tablename__ = "ui_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    api_key_id: int = Field(foreign_key="api_keys.id", index=True)
    csrf_token: str = Field(max_length=64)
    created_at: float
    expires_at: float


class JobLease(SQLModel, table=True):
    """Which hub process runs a singleton job (incidents, notifier) until ``expires_at``."""

    __tablename__ = "job_leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: float


class HubProcessRecord(SQLModel, table=True):
    """A hub process on this database, as it last reported itself (every ``report_s``): so any
    process, behind a load balancer, can list them all (``GET /api/v1/hubs``)."""

    __tablename__ = "hub_processes"

    holder: str = Field(primary_key=True, max_length=128)  # its name in job_leases
    client_id: str = Field(max_length=64)
    host: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=32)
    started_at: float
    seen_at: float = Field(index=True)
    stopped_at: float | None = None
    report_s: float
    figures: dict[str, float] = Field(default_factory=dict,
                                      sa_column=Column(JSON, nullable=False))


class EnrollmentJobRecord(SQLModel, table=True):
    """A bulk enrollment job (``POST /api/v1/enrollment-jobs``), so that any hub process can
    answer for it. Its bundles hold the devices' passwords: they are kept only sealed, with a
    key that was handed to the caller and that the hub does not keep
    (:mod:`cloud_hub.identity.enrollment_jobs`)."""

    __tablename__ = "enrollment_jobs"

    id: str = Field(primary_key=True, max_length=32)
    holder: str = Field(max_length=128)  # the process running it (hub_processes.holder)
    status: EnrollmentJobStatus = enum_field(EnrollmentJobStatus, EnrollmentJobStatus.RUNNING,
                                             length=16)
    stage: str = Field(max_length=32)
    devices_total: int
    devices_done: int = 0
    device_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    error: str | None = None
    created_at: float = Field(index=True)
    finished_at: float | None = None
    bundles_collected: bool = False
    sealed: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    sealed_until: float | None = None
