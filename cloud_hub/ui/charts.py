"""Chart data: readings around a time span (thinned to a min/max envelope so spikes survive),
the anomaly events on the same time axis, the model's normal band per channel, and small
server-rendered sparklines (SVG points, no script) for the inbox."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from cloud_hub.db.queries import read_telemetry
from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.db.tables import Anomaly, TelemetryBatchRow

__all__ = ["Sparkline", "chart_data", "sparkline", "sparklines"]

MAX_READINGS = 20_000  # read at most this many readings for one chart
BAND_SIGMAS = 3.0


def envelope(ts: npt.NDArray[np.float64], values: npt.NDArray[np.float64], points: int
             ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """At most about ``points`` rows: each bucket keeps its min and max per channel (at the
    bucket's first and last time), so a one-reading spike survives the thinning."""
    n = len(ts)
    if n <= points:
        return ts, values
    buckets = max(1, points // 2)
    starts = np.unique(np.linspace(0, n, buckets + 1).astype(int)[:-1])
    ends = np.append(starts[1:], n) - 1
    lows = np.minimum.reduceat(values, starts, axis=0)
    highs = np.maximum.reduceat(values, starts, axis=0)
    out_ts = np.empty(2 * len(starts))
    out_ts[0::2], out_ts[1::2] = ts[starts], ts[ends]
    out_vals = np.empty((2 * len(starts), values.shape[1]))
    out_vals[0::2], out_vals[1::2] = lows, highs
    return out_ts, out_vals


def _clean(values: npt.NDArray[np.float64]) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 6) for v in values]


def _bands(session: Session, name: str | None, version: int | None,
           channels: list[str]) -> dict[str, list[float]]:
    """Per channel: [low, high] of the model's normal band (center ± 3 scale, z-score models)."""
    if name is None or version is None:
        return {}
    model = session.exec(select(ModelVersion).where(
        ModelVersion.name == name, ModelVersion.version == version)).first()
    if model is None:
        return {}
    norm = model.normalization or {}
    center, scale = norm.get("center") or norm.get("mean"), norm.get("scale") or norm.get("std")
    if norm.get("method") not in (None, "zscore") or not center or not scale:
        return {}
    bands = {}
    for channel, c, s in zip(model.channels, center, scale, strict=False):
        if channel in channels:
            bands[channel] = [c - BAND_SIGMAS * s, c + BAND_SIGMAS * s]
    return bands


def chart_data(
    session: Session, *, device_id: str, since: float, until: float,
    channels: list[str] | None = None, model: tuple[str | None, int | None] = (None, None),
    points: int = 1200, incident_id: int | None = None,
) -> dict[str, Any]:
    """Readings of ``device_id`` in [since, until], its events there, bands and threshold."""
    piece = read_telemetry(session, device_id=device_id, since=since, until=until,
                           limit=MAX_READINGS)
    names = list(piece.channels)
    keep = [i for i, c in enumerate(names) if channels is None or c in channels]
    ts, values = envelope(piece.ts, piece.values[:, keep] if len(keep) else piece.values,
                          points)
    shown = [names[i] for i in keep]
    events = list(session.exec(
        select(Anomaly).where(Anomaly.device_id == device_id, Anomaly.ts_end >= since,
                              Anomaly.ts_start <= until)
        .order_by(col(Anomaly.ts_start)).limit(2000)))
    threshold = events[-1].threshold if events else None
    name, version = model
    if name is None and events:
        name, version = events[-1].model_name, events[-1].model_version
    return {
        "device_id": device_id, "since": since, "until": until,
        "ts": _clean(ts), "channels": shown,
        "values": [_clean(values[:, i]) for i in range(len(shown))] if len(ts) else
                  [[] for _ in shown],
        "bands": _bands(session, name, version, shown),
        "events": [{"start": a.ts_start, "end": a.ts_end, "score": a.score,
                    "threshold": a.threshold, "seq": a.seq,
                    "mine": incident_id is not None and a.incident_id == incident_id}
                   for a in events],
        "threshold": threshold, "readings": int(len(piece.ts)),
    }


@dataclass(frozen=True)
class Sparkline:
    """Polylines in a 0..width × 0..height box (each channel scaled to its own range)."""

    width: int
    height: int
    lines: list[tuple[str, str]]  # (channel, "x,y x,y ...")
    window: tuple[float, float] | None  # x range of the incident, for a shaded rectangle
    readings: int


def _spark(piece_ts: npt.NDArray[np.float64], piece_values: npt.NDArray[np.float64],
           names: list[str], *, start: float, end: float, channels: list[str], width: int,
           height: int, max_channels: int) -> Sparkline:
    span = max(end - start, 1.0)
    pad = max(span * 0.5, 30.0)
    since, until = start - pad, end + pad
    wanted = [c for c in channels if c in names][:max_channels] or names[:1]
    lines: list[tuple[str, str]] = []
    ts, values = envelope(piece_ts, piece_values, width)
    if len(ts) >= 2:
        xs = (ts - since) / (until - since) * width
        for channel in wanted:
            v = values[:, names.index(channel)]
            lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
            ys = height - 2 - (v - lo) / ((hi - lo) or 1.0) * (height - 4)
            lines.append((channel, " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys,
                                                                              strict=True))))
    x0 = (start - since) / (until - since) * width
    x1 = (end - since) / (until - since) * width
    return Sparkline(width, height, lines, (round(x0, 1), round(max(x1 - x0, 1.0), 1)),
                     int(len(piece_ts)))


def sparkline(session: Session, *, device_id: str, start: float, end: float,
              channels: list[str], width: int = 160, height: int = 32,
              max_channels: int = 3) -> Sparkline:
    """The readings of one device around [start, end]."""
    return sparklines(session, [(device_id, start, end, channels)], width=width,
                      height=height, max_channels=max_channels)[0]


def sparklines(session: Session, spans: list[tuple[str, float, float, list[str]]], *,
               width: int = 160, height: int = 32, max_channels: int = 3,
               max_batches: int = 200) -> list[Sparkline]:
    """Sparklines of many (device, start, end, channels) spans with one SQL query: a page of
    the inbox reads its 50 sparklines at once."""
    if not spans:
        return []
    windows = []
    for device_id, start, end, _channels in spans:
        pad = max(max(end - start, 1.0) * 0.5, 30.0)
        windows.append((device_id, start - pad, end + pad))
    row = TelemetryBatchRow
    stmt = select(  # type: ignore[call-overload]
        row.device_id, row.ts_first, row.ts_last, row.channels, row.ts_blob, row.values_blob
    ).where(or_(*(and_(col(row.device_id) == d, col(row.ts_last) >= lo,
                       col(row.ts_first) <= hi) for d, lo, hi in windows)))
    stmt = stmt.limit(max_batches * len(spans))
    by_device: dict[str, list[Any]] = {}
    for batch in session.exec(stmt):
        by_device.setdefault(batch[0], []).append(batch)
    out = []
    for (device_id, start, end, channels), (_d, lo, hi) in zip(spans, windows, strict=True):
        batches = sorted((b for b in by_device.get(device_id, [])
                          if b[2] >= lo and b[1] <= hi), key=lambda b: b[1])
        names = list(batches[0][3]) if batches else []
        ts_parts, value_parts = [], []
        for b in batches:
            if list(b[3]) != names:
                continue
            ts = np.frombuffer(b[4], dtype="<f8")
            values = np.frombuffer(b[5], dtype="<f8").reshape(len(ts), len(names))
            keep = (ts >= lo) & (ts <= hi)
            ts_parts.append(ts[keep])
            value_parts.append(values[keep])
        ts_all = np.concatenate(ts_parts) if ts_parts else np.zeros(0)
        values_all = (np.concatenate(value_parts) if value_parts
                      else np.zeros((0, len(names))))
        order = np.argsort(ts_all, kind="stable")
        out.append(_spark(ts_all[order], values_all[order], names, start=start, end=end,
                          channels=channels, width=width, height=height,
                          max_channels=max_channels))
    return out
