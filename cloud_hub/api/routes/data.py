"""What devices sent: telemetry, anomalies, and the dead letters ingest refused.

Every listing is paged in SQL: ``limit`` per page and ``cursor`` from the ``X-Next-Cursor``
header of the previous page (see ``cloud_hub.api.paging``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel

from cloud_hub.api.deps import ReadKey, SessionDep
from cloud_hub.api.paging import (
    PAGE_HEADERS,
    CursorQuery,
    bad_cursor,
    decode_cursor,
    paged,
    set_next_page,
)
from cloud_hub.api.schemas import (
    AnomalyPublic,
    DeadLetterPublic,
    TelemetryPublic,
    TelemetrySummary,
)
from cloud_hub.db.paging import CursorError
from cloud_hub.db.queries import (
    TelemetryCursor,
    list_anomalies,
    list_dead_letters,
    read_telemetry,
    telemetry_summary,
)
from cloud_hub.maintenance.rollup_reads import count_rollups, read_rollups
from shared.topics import DEVICE_ID_PATTERN

router = APIRouter(tags=["data"])
DeviceQuery = Annotated[str, Query(pattern=rf"^{DEVICE_ID_PATTERN}$")]

MAX_TELEMETRY_READINGS = 100_000
MAX_SUMMARY_DEVICES = 10_000
MAX_ANOMALIES = 10_000
MAX_DEAD_LETTERS = 1000


@router.get("/telemetry", response_model=TelemetryPublic, responses=PAGE_HEADERS)
def telemetry(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    device_id: DeviceQuery,
    since: Annotated[float | None, Query(ge=0)] = None,
    until: Annotated[float | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_TELEMETRY_READINGS,
                                description="readings per page")] = 10_000,
    cursor: CursorQuery = None,
) -> TelemetryPublic:
    """Readings of one device, time-ordered: at most ``limit`` from ``since`` per page."""
    _refuse_reversed(since, until, "since", "until")
    after = None
    if cursor is not None:
        try:
            after = TelemetryCursor.from_json(decode_cursor(cursor))
        except CursorError as exc:
            raise bad_cursor(str(exc)) from None
    piece = read_telemetry(session, device_id=device_id, since=since, until=until, limit=limit,
                           after=after)
    set_next_page(request, response,
                  piece.next_cursor.to_json() if piece.next_cursor else None)
    return TelemetryPublic(device_id=device_id, channels=piece.channels,
                           ts=piece.ts.tolist(), values=piece.values.tolist())


def _refuse_reversed(since: float | None, until: float | None, start: str, end: str) -> None:
    """422 naming the end of a range that ends before it starts (it would select nothing)."""
    if since is not None and until is not None and until < since:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{
            "loc": ["query", end], "type": "value_error", "input": until,
            "msg": f"{end} {until} is before {start} {since}: the range selects nothing"}])


class TelemetryRollupsPublic(BaseModel):
    """Buckets of one device: per bucket start (``ts``) and channel, the readings' count,
    mean, min and max (null where a channel had no reading in that bucket)."""

    device_id: str
    resolution: Literal["1m", "1h"]
    channels: list[str]
    ts: list[float]
    count: list[list[int]]
    mean: list[list[float | None]]
    min: list[list[float | None]]
    max: list[list[float | None]]


@router.get("/devices/{device_id}/telemetry",
            response_model=TelemetryPublic | TelemetryRollupsPublic, responses=PAGE_HEADERS)
def device_telemetry(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    device_id: Annotated[str, Path(pattern=rf"^{DEVICE_ID_PATTERN}$")],
    since: Annotated[float | None, Query(alias="from", ge=0)] = None,
    until: Annotated[float | None, Query(alias="to", ge=0)] = None,
    resolution: Literal["raw", "1m", "1h"] = "raw",
    limit: Annotated[int, Query(ge=1, le=MAX_TELEMETRY_READINGS,
                                description="raw: readings per page; 1m and 1h: the most "
                                            "buckets the range may hold (more is a 422)")
                     ] = 10_000,
    cursor: CursorQuery = None,
) -> TelemetryPublic | TelemetryRollupsPublic:
    """A device's telemetry in [from, to]: raw readings (paged like ``GET /telemetry``), or
    1-minute or 1-hour rollups (kept much longer than raw data; complete up to about a
    minute ago, when the maintenance job last ran), at most ``limit`` buckets in one answer."""
    _refuse_reversed(since, until, "from", "to")
    if resolution == "raw":
        return telemetry(request, response, session, _key, device_id, since, until, limit,
                         cursor)
    held = count_rollups(session.connection(), device_id=device_id, resolution=resolution,
                         since=since, until=until)
    if held > limit:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{
            "loc": ["query", "limit"], "type": "value_error", "input": limit,
            "msg": f"from={since} to={until} holds {held} {resolution} buckets of device "
                   f"{device_id}, more than limit {limit}: narrow from/to, ask for 1h, or "
                   f"raise limit (at most {MAX_TELEMETRY_READINGS})"}])
    found = read_rollups(session.connection(), device_ids=[device_id], resolution=resolution,
                         since=since, until=until).get(device_id)
    if found is None:
        return TelemetryRollupsPublic(device_id=device_id, resolution=resolution, channels=[],
                                      ts=[], count=[], mean=[], min=[], max=[])

    def cells(a: Any) -> list[list[float | None]]:
        return [[None if x != x else x for x in row] for row in a.tolist()]  # NaN -> null

    return TelemetryRollupsPublic(
        device_id=device_id, resolution=resolution, channels=found["channels"],
        ts=found["ts"].tolist(), count=found["count"].tolist(), mean=cells(found["mean"]),
        min=cells(found["min"]), max=cells(found["max"]))


@router.get("/telemetry/summary", response_model=list[TelemetrySummary], responses=PAGE_HEADERS)
def summary(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=MAX_SUMMARY_DEVICES)] = 1000,
    cursor: CursorQuery = None,
) -> list[TelemetrySummary]:
    """Per device (in device id order): readings, batches, time range, missing batches."""
    rows = paged(request, response, cursor,
                 lambda after: telemetry_summary(session, limit=limit, after=after))
    return [TelemetrySummary.model_validate(row) for row in rows]


@router.get("/anomalies", response_model=list[AnomalyPublic], responses=PAGE_HEADERS)
def anomalies(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    device_id: DeviceQuery | None = None,
    since: Annotated[float | None, Query(ge=0, description="stored_at >= since")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ANOMALIES)] = 1000,
    cursor: CursorQuery = None,
    order: Annotated[str, Query(pattern="^(stored|newest)$",
                                description="`stored`: oldest first; `newest`: latest first")
                     ] = "stored",
) -> list[AnomalyPublic]:
    """Anomaly events in the order the hub stored them (``stored_at`` = commit time)."""
    rows = paged(request, response, cursor, lambda after: list_anomalies(
        session, device_id=device_id, since=since, limit=limit, after=after,
        newest_first=order == "newest"))
    return [AnomalyPublic.model_validate(r, from_attributes=True) for r in rows]


@router.get("/dead-letters", response_model=list[DeadLetterPublic], responses=PAGE_HEADERS)
def dead_letters(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=MAX_DEAD_LETTERS)] = 100,
    cursor: CursorQuery = None,
) -> list[DeadLetterPublic]:
    """Payloads ingest refused, newest first, with the reason."""
    rows = paged(request, response, cursor,
                 lambda after: list_dead_letters(session, limit=limit, after=after))
    return [DeadLetterPublic.model_validate(r, from_attributes=True) for r in rows]
