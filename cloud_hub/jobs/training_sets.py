"""Training sets: what a training job learns from, read from the store.

:func:`load_training_set` reads the requested devices' stored readings (one segment per
device, or per stretch between the anomaly events judged to be faults when the request leaves
those out: :func:`normal_runs`); :func:`load_federated_set` pools the training statistics
devices sent in their drift summaries instead of readings. Either refuses a request that
selects nothing usable with :class:`TrainingDataError`, which says what was selected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from cloud_hub.db.enrollments import NotEnrolled, enrolled_among, require_enrolled
from cloud_hub.db.queries import count_readings, list_devices, read_telemetry
from cloud_hub.db.tables import Anomaly
from cloud_hub.jobs.request import FederatedSet, TrainingRequest

__all__ = ["TrainingDataError", "load_federated_set", "load_training_set", "normal_runs"]


class TrainingDataError(ValueError):
    """The stored telemetry cannot make a training set for this request."""


def load_training_set(
    session: Session, request: TrainingRequest, *, max_readings: int | None = None,
) -> tuple[np.ndarray, list[str], list[int], dict[str, Any]]:
    """Readings of the requested devices (one segment each), channels, and what was used.

    More than ``max_readings`` selected is refused before any is loaded.
    """
    device_ids = request.devices
    if not device_ids:
        candidates = [d.device_id for d in list_devices(session) if d.telemetry_readings > 0]
        enrolled = enrolled_among(session, candidates)  # a revoked device's data is not used
        device_ids = [d for d in candidates if d in enrolled]
    else:
        try:
            require_enrolled(session, device_ids, "training")
        except NotEnrolled as exc:
            raise TrainingDataError(str(exc)) from None
        known = {d.device_id for d in list_devices(session, device_ids=device_ids)}
        missing = sorted(set(device_ids) - known)
        if missing:
            raise TrainingDataError(f"devices {missing} have never sent anything")
    channels = request.channels
    since, until = request.since, request.until
    if max_readings is not None:
        selected = count_readings(session, device_ids=device_ids, since=since, until=until)
        if selected > max_readings:
            raise TrainingDataError(
                f"devices={request.devices or 'all'} since={since} until={until} "
                f"select {selected} readings; a training job may load at most {max_readings}")
    parts, segments, used = [], [], []
    first_ts, last_ts = None, None
    left_out = 0
    starts = request.device_since or {}
    for device_id in sorted(device_ids):
        start = max((t for t in (since, starts.get(device_id)) if t is not None), default=None)
        piece = read_telemetry(session, device_id=device_id, since=start, until=until,
                               channels=channels)
        if len(piece.ts) == 0:
            continue
        channels = piece.channels
        runs = [(0, len(piece.ts))]
        if request.exclude_anomalies:
            runs = normal_runs(session, device_id, piece.ts, min_rows=request.min_segment_rows)
            left_out += len(piece.ts) - sum(b - a for a, b in runs)
        for a, b in runs:
            parts.append(piece.values[a:b])
            segments.append(b - a)
        if not runs:
            continue
        used.append(device_id)
        first_ts = min(first_ts or piece.ts[0], float(piece.ts[0]))
        last_ts = max(last_ts or piece.ts[-1], float(piece.ts[-1]))
    if not parts or channels is None:
        raise TrainingDataError(
            f"no stored telemetry for devices={request.devices or 'all'} "
            f"channels={request.channels or 'all'} since={since} until={until}"
        )
    readings = np.concatenate(parts).astype(np.float32)
    training = {"devices": used, "channels": channels, "since": first_ts, "until": last_ts,
                "segments": segments}
    if starts:
        training["device_since"] = {d: t for d, t in sorted(starts.items()) if d in used}
    if request.exclude_anomalies:
        training["readings_left_out"] = left_out  # inside or next to stored anomaly events
    return readings, list(channels), segments, training


def load_federated_set(session: Session, request: FederatedSet) -> tuple[Any, dict[str, Any]]:
    """The pooled training statistics the requested devices sent in drift summaries between
    ``since`` and ``until`` (device time of the periods' ends), and what was used."""
    from cloud_hub.db.drift_tables import DriftSummaryRow
    from cloud_hub.training.errors import TrainingError
    from cloud_hub.training.federated import merge_stats

    device_ids = list(request.devices)
    try:
        require_enrolled(session, device_ids, "training")
    except NotEnrolled as exc:
        raise TrainingDataError(str(exc)) from None
    stmt = select(DriftSummaryRow).where(col(DriftSummaryRow.device_id).in_(device_ids),
                                         col(DriftSummaryRow.has_training).is_(True))
    if request.since is not None:
        stmt = stmt.where(DriftSummaryRow.period_end >= request.since)
    if request.until is not None:
        stmt = stmt.where(DriftSummaryRow.period_end <= request.until)
    rows = list(session.exec(stmt.order_by(col(DriftSummaryRow.device_id),
                                           col(DriftSummaryRow.period_end))))
    if not rows:
        raise TrainingDataError(
            f"no federated statistics from devices {device_ids} between {request.since} "
            f"and {request.until} (they need telemetry.upload = \"summaries\")")
    try:
        stats = merge_stats([r.training for r in rows if r.training])
    except TrainingError as exc:
        raise TrainingDataError(str(exc)) from None
    used = sorted({r.device_id for r in rows})
    return stats, {"devices": used, "channels": stats.channels, "source": "federated statistics",
                   "summaries": len(rows), "windows": stats.windows,
                   "since": rows[0].period_start, "until": rows[-1].period_end,
                   "segments": []}


def normal_runs(session: Session, device_id: str, ts: np.ndarray, *,
                min_rows: int) -> list[tuple[int, int]]:
    """Index ranges of ``ts`` (sorted) outside the device's stored anomaly events judged to be
    faults, each widened by its own window length on both sides (the readings that led into
    the event and its trailing edge); ranges shorter than ``min_rows`` are dropped.

    Every event is a fault unless the events cover most of the range: then the model that
    raised them no longer fits the device (a drift, which is why it is retrained) and most
    events are false alarms; only those scoring above 3 × the events' median score (a fault on
    top of the drift) are left out."""
    if len(ts) == 0:
        return []
    keep = np.ones(len(ts), dtype=bool)
    events = list(session.exec(select(Anomaly.ts_start, Anomaly.ts_end, Anomaly.score).where(
        Anomaly.device_id == device_id, Anomaly.ts_end >= float(ts[0]),
        Anomaly.ts_start <= float(ts[-1]))))
    covered = sum(min(e, float(ts[-1])) - max(s, float(ts[0])) for s, e, _ in events)
    if events and covered > 0.5 * max(float(ts[-1] - ts[0]), 1e-9):
        cut = 3.0 * float(np.median([score for _, _, score in events]))
        events = [e for e in events if e[2] > cut]
    for start, end, _score in events:
        span = max(end - start, 0.0)
        a = int(np.searchsorted(ts, start - span, side="left"))
        b = int(np.searchsorted(ts, end + span, side="right"))
        keep[a:b] = False
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)
            if b - a >= min_rows]
