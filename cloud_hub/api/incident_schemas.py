"""Request and response bodies of incidents and webhook rules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.core.states import DeliveryStatus, IncidentState, WebhookEvent

__all__ = ["DeliveryPublic", "EventPublic", "IncidentAction", "IncidentDetail", "IncidentPublic",
           "WebhookCreate", "WebhookCreated", "WebhookPublic", "WebhookUpdate"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IncidentAction(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"note": "valve V3 replaced, pressure back to normal"}]})
    note: str | None = Field(default=None, max_length=2000)


class IncidentPublic(BaseModel):
    id: int
    device_id: str
    state: IncidentState
    started_at: float = Field(description="device time of the first window's start")
    ended_at: float = Field(description="device time of the last window's end")
    opened_at: float = Field(description="hub time the first event was stored")
    last_event_at: float
    updated_at: float
    events: int
    peak_score: float
    threshold: float = Field(description="the threshold of the peak event")
    channels: list[str] = Field(description="channels named by the events, most frequent first")
    model: dict[str, Any]
    acknowledged_by: str | None
    acknowledged_at: float | None
    ack_note: str | None
    resolved_by: str | None = Field(description="an API key's name, or `auto` when it went quiet")
    resolved_at: float | None
    resolve_note: str | None
    fault_class: str | None = Field(default=None, description="only once events carry it")
    rul_s: float | None = Field(default=None, description="only once events carry it")


class EventPublic(BaseModel):
    device_id: str
    seq: int
    ts_start: float
    ts_end: float
    score: float
    threshold: float
    model: dict[str, Any]
    channels: list[str]
    detected_at: float
    stored_at: float
    incident_id: int | None


class IncidentDetail(IncidentPublic):
    event_list: list[EventPublic] = Field(description="its events in device time order "
                                                      "(the first 500)")


class WebhookCreate(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "on-call", "url": "https://alerts.example.com/edgeloop", "group": "plant-a",
        "min_score": 0.5}]})
    name: str = Field(min_length=1, max_length=64)
    url: str = Field(min_length=8, max_length=2000)
    group: str | None = Field(default=None, max_length=64)
    tag: str | None = Field(default=None, max_length=64)
    min_score: float | None = Field(default=None, ge=0)
    fault_class: str | None = Field(default=None, max_length=64)


class WebhookUpdate(_Body):
    enabled: bool


class WebhookPublic(BaseModel):
    id: int
    name: str
    url: str
    group: str | None
    tag: str | None
    min_score: float | None
    fault_class: str | None
    enabled: bool
    created_at: float
    secret_prefix: str
    deliveries: dict[str, int]


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="the HMAC-SHA256 key; shown only in this response")


class DeliveryPublic(BaseModel):
    id: int
    rule_id: int
    incident_id: int
    event: WebhookEvent
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_status_code: int | None
    created_at: float
    delivered_at: float | None
