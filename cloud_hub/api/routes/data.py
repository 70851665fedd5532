"""What devices sent: telemetry, anomalies, and the dead letters ingest refused."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud_hub.api.deps import ReadKey, SessionDep
from cloud_hub.api.schemas import (
    AnomalyPublic,
    DeadLetterPublic,
    TelemetryPublic,
    TelemetrySummary,
)
from cloud_hub.db.queries import (
    list_anomalies,
    list_dead_letters,
    read_telemetry,
    telemetry_summary,
)
from shared.topics import DEVICE_ID_PATTERN

router = APIRouter(tags=["data"])
DeviceQuery = Annotated[str, Query(pattern=rf"^{DEVICE_ID_PATTERN}$")]


@router.get("/telemetry", response_model=TelemetryPublic)
def telemetry(
    session: SessionDep, _key: ReadKey, device_id: DeviceQuery,
    since: Annotated[float | None, Query(ge=0)] = None,
    until: Annotated[float | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=1_000_000)] = 100_000,
) -> TelemetryPublic:
    """Readings of one device, time-ordered (at most ``limit`` rows from ``since``)."""
    piece = read_telemetry(session, device_id=device_id, since=since, until=until, limit=limit)
    return TelemetryPublic(device_id=device_id, channels=piece.channels,
                           ts=piece.ts.tolist(), values=piece.values.tolist())


@router.get("/telemetry/summary", response_model=list[TelemetrySummary])
def summary(session: SessionDep, _key: ReadKey) -> list[TelemetrySummary]:
    return [TelemetrySummary.model_validate(row) for row in telemetry_summary(session)]


@router.get("/anomalies", response_model=list[AnomalyPublic])
def anomalies(
    session: SessionDep, _key: ReadKey, device_id: DeviceQuery | None = None,
    since: Annotated[float | None, Query(ge=0, description="stored_at >= since")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[AnomalyPublic]:
    """Anomaly events in the order the hub stored them (``stored_at`` = commit time)."""
    rows = list_anomalies(session, device_id=device_id, since=since, limit=limit)
    return [AnomalyPublic.model_validate(r, from_attributes=True) for r in rows]


@router.get("/dead-letters", response_model=list[DeadLetterPublic])
def dead_letters(
    session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[DeadLetterPublic]:
    """Payloads ingest refused, newest first, with the reason."""
    return [DeadLetterPublic.model_validate(r, from_attributes=True)
            for r in list_dead_letters(session, limit=limit)]
