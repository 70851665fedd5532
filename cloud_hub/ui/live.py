"""Live updates: server-sent events that tell open pages what changed.

Each topic has a token, computed from the database with one small query: the latest incident
change, the latest anomaly stored, the fleet's counts per state, the progress of rollouts, the
webhook deliveries, and (for a device page) the device's latest telemetry batch and record.
An event stream compares the tokens about once a second and sends the name of each topic that
changed; the page then fetches the fragment it shows. Reading the database, not this process's
memory, keeps the stream right whichever hub process stored the change.

A page is rendered with the tokens it was rendered from (``t``), so a change that lands between
the render and the stream's start is still announced.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from cloud_hub.core.states import ROLLOUT_ACTIVE, DevicePresence
from cloud_hub.db.ops_tables import Incident, WebhookDelivery
from cloud_hub.db.registry_tables import Rollout, RolloutDevice
from cloud_hub.db.tables import Anomaly, Device, TelemetryKey

__all__ = ["GLOBAL_TOPICS", "SILENT_AFTER_S", "decode_token", "event_stream", "live_token",
           "snapshot"]

GLOBAL_TOPICS = ("incidents", "anomalies", "fleet", "rollouts", "deliveries")
SILENT_AFTER_S = 60.0  # online by its status record, but nothing heard for this long
_CACHE_S = 0.5
_cache: dict[str, Any] = {"at": 0.0, "tokens": None}
_cache_lock = threading.Lock()


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:16]


def display_state(now: float) -> Any:
    """SQL: online / silent / offline, for the fleet's counts and filters. Grouping by it, pass
    the same expression to ``select`` and ``group_by``: two calls bind ``now`` twice, and
    PostgreSQL refuses a GROUP BY that differs from the selected column by its parameters."""
    fresh = col(Device.last_seen) >= now - SILENT_AFTER_S
    return case((col(Device.online) & fresh, DevicePresence.ONLINE.value),
                (col(Device.online), DevicePresence.SILENT.value),
                else_=DevicePresence.OFFLINE.value)


def _global_tokens(session: Session) -> dict[str, str]:
    now = time.time()
    incidents = session.exec(select(func.max(Incident.updated_at), func.count())
                             .select_from(Incident)).one()
    anomalies = session.exec(select(func.max(Anomaly.stored_at))).one()
    # Rounded to the silent window, so that `silent` flips are noticed but last_seen is not.
    state = display_state(now)  # one expression in both clauses: PostgreSQL wants them equal
    fleet = session.exec(
        select(state, Device.reported_state, Device.active_version, func.count())
        .group_by(state, col(Device.reported_state), col(Device.active_version))
    ).all()
    rollouts = session.exec(
        select(Rollout.id, Rollout.status, Rollout.stage)
        .where(col(Rollout.status).in_(ROLLOUT_ACTIVE)
               | (col(Rollout.finished_at) >= now - 120))).all()
    progress = session.exec(
        select(func.count(col(RolloutDevice.confirmed_at)),
               func.count(col(RolloutDevice.failed_at)),
               func.count(col(RolloutDevice.revert_confirmed_at)))
        .where(col(RolloutDevice.rollout_id).in_([r[0] for r in rollouts]))).one()
    deliveries = session.exec(
        select(WebhookDelivery.status, func.count(), func.max(WebhookDelivery.attempts))
        .group_by(col(WebhookDelivery.status))).all()
    return {
        "incidents": _digest(incidents), "anomalies": _digest(anomalies),
        "fleet": _digest(sorted(map(tuple, fleet), key=str)),
        "rollouts": _digest([sorted(map(tuple, rollouts)), tuple(progress)]),
        "deliveries": _digest(sorted(map(tuple, deliveries), key=str)),
    }


def _device_tokens(session: Session, device_id: str) -> dict[str, str]:
    latest = session.exec(select(func.max(TelemetryKey.seq)).where(
        TelemetryKey.device_id == device_id)).one()
    device = session.get(Device, device_id)
    record = None if device is None else (
        device.online, device.reported_state, device.active_version, device.desired_version,
        (device.heartbeat or {}).get("at"), device.anomalies)
    return {"telemetry": _digest(latest), "device": _digest(record)}


def snapshot(session: Session, device: str | None = None) -> dict[str, str]:
    """Every topic's token now (the global ones shared by all streams for half a second)."""
    with _cache_lock:
        if _cache["tokens"] is None or time.monotonic() - _cache["at"] > _CACHE_S:
            _cache["tokens"], _cache["at"] = _global_tokens(session), time.monotonic()
        tokens: dict[str, str] = dict(_cache["tokens"])
    if device is not None:
        tokens.update(_device_tokens(session, device))
    return tokens


def live_token(session: Session, device: str | None = None) -> str:
    """The tokens a page was rendered from, for its event stream's ``t`` parameter."""
    text = json.dumps(snapshot(session, device), separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_token(token: str | None) -> dict[str, str]:
    if not token:
        return {}
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


async def event_stream(
    read: Callable[[], dict[str, str]], *, start: dict[str, str], alive: Callable[[], bool],
    disconnected: Callable[[], Any], interval_s: float = 1.0, keepalive_s: float = 15.0,
    lifetime_s: float = 300.0,
) -> AsyncIterator[str]:
    """SSE text: one ``event: <topic>`` per changed topic, comments to keep the line open.

    It ends after ``lifetime_s`` (the browser reconnects, with the last tokens it saw lost,
    which only costs a refresh) or when the client or the hub goes away.
    """
    last = dict(start)
    yield "retry: 2000\n\n"
    began = quiet_since = time.monotonic()
    while alive() and time.monotonic() - began < lifetime_s:
        if await disconnected():
            return
        tokens = await asyncio.to_thread(read)
        changed = [t for t, v in tokens.items() if last.get(t) is not None and last[t] != v]
        last.update(tokens)
        for topic in changed:
            yield f"event: {topic}\ndata: {topic}\n\n"
        if changed:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > keepalive_s:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(interval_s)
