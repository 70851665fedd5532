"""Chart data: readings around a time span (thinned to a min/max envelope so spikes survive),
the anomaly events on the same time axis, the model's normal band per channel, and small
server-rendered sparklines (SVG points, no script) for the inbox."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlmodel import Session, col, select

from cloud_hub.db.queries import read_telemetry
from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.db.tables import Anomaly

__all__ = ["Sparkline", "chart_data", "sparkline"]

MAX_READINGS = 20_000  # read at most this many readings for one chart
BAND_SIGMAS = 3.0


def envelope(ts: npt.NDArray[np.float64], values: npt.NDArray[np.float64], points: int
             ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """At most about ``points`` rows: each bucket keeps its min and max row per channel."""
    n = len(ts)
    if n <= points:
        return ts, values
    buckets = max(1, points // 2)
    edges = np.linspace(0, n, buckets + 1).astype(int)
    out_ts, out_vals = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        chunk = values[lo:hi]
        out_ts += [ts[lo], ts[hi - 1]]
        out_vals += [np.nanmin(chunk, axis=0), np.nanmax(chunk, axis=0)]
    return np.asarray(out_ts), np.asarray(out_vals)


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


def sparkline(session: Session, *, device_id: str, start: float, end: float,
              channels: list[str], width: int = 160, height: int = 32,
              max_channels: int = 3) -> Sparkline:
    span = max(end - start, 1.0)
    pad = max(span * 0.5, 30.0)
    since, until = start - pad, end + pad
    piece = read_telemetry(session, device_id=device_id, since=since, until=until,
                           limit=5000)
    wanted = [c for c in channels if c in piece.channels][:max_channels] or list(
        piece.channels[:1])
    lines: list[tuple[str, str]] = []
    ts, values = envelope(piece.ts, piece.values, width)
    if len(ts) >= 2:
        xs = (ts - since) / (until - since) * width
        for channel in wanted:
            v = values[:, piece.channels.index(channel)]
            lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
            ys = height - 2 - (v - lo) / ((hi - lo) or 1.0) * (height - 4)
            lines.append((channel, " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys,
                                                                              strict=True))))
    x0 = (start - since) / (until - since) * width
    x1 = (end - since) / (until - since) * width
    return Sparkline(width, height, lines, (round(x0, 1), round(max(x1 - x0, 1.0), 1)),
                     int(len(piece.ts)))
