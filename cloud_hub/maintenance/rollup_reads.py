"""Telemetry rollups read back: each device's buckets over a time range as arrays (bucket x
channel), for ``GET /api/v1/devices/{id}/telemetry?resolution=1m|1h`` and the console. The
buckets are written by :mod:`cloud_hub.maintenance.rollups`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sqlalchemy import LargeBinary, Table, func, literal, select
from sqlalchemy.engine import Connection

from cloud_hub.db import pg_bulk
from cloud_hub.db.rollup_tables import TelemetryRollup
from cloud_hub.maintenance.rollups import RESOLUTIONS

__all__ = ["count_rollups", "read_rollups"]

_rollups: Table = TelemetryRollup.__table__  # type: ignore[attr-defined]


def _in_range(conn: Connection, device_ids: list[str], resolution: str, since: float | None,
              until: float | None) -> list[Any]:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution {resolution!r} is not one of {sorted(RESOLUTIONS)}")
    u = _rollups.c
    where = [pg_bulk.in_list(u.device_id, device_ids, conn.dialect.name),
             u.resolution == resolution]
    if since is not None:
        width = RESOLUTIONS[resolution]
        where.append(u.bucket >= float(np.floor(since / width) * width))
    if until is not None:
        where.append(u.bucket < until)
    return where


def count_rollups(conn: Connection, *, device_id: str, resolution: str, since: float | None,
                  until: float | None) -> int:
    """How many buckets :func:`read_rollups` would answer for this device (counted in SQL, so
    that a reader can refuse a range of millions before reading it)."""
    stmt = select(func.count(func.distinct(_rollups.c.bucket))).where(
        *_in_range(conn, [device_id], resolution, since, until))
    return int(conn.execute(stmt).scalar_one())


def read_rollups(conn: Connection, *, device_ids: list[str], resolution: str,
                 since: float | None, until: float | None) -> dict[str, dict[str, Any]]:
    """Each device's buckets in [since, until): ``ts`` (bucket starts, an array), ``channels``,
    and 2-D arrays (bucket x channel) ``count``, ``mean``, ``min``, ``max`` (NaN where a
    channel had no reading in a bucket). One query for all the devices; on PostgreSQL each
    device's buckets come back concatenated (``string_agg``), decoded by numpy at once
    (:func:`_read_pg`)."""
    u = _rollups.c
    where = _in_range(conn, device_ids, resolution, since, until)
    parts: dict[str, list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                np.ndarray]]] = {}
    if conn.dialect.name == "postgresql":
        _read_pg(conn, where, parts)
    else:
        stmt = (select(u.device_id, u.bucket, u.channels, u.counts, u.sums, u.mins, u.maxs)
                .where(*where).order_by(u.device_id, u.bucket))
        for device_id, bucket, channels, counts, sums, mins, maxs in conn.execute(stmt):
            names = json.loads(channels)
            parts.setdefault(device_id, []).append((
                names, np.array([bucket]), np.frombuffer(counts, "<i8")[None, :],
                np.frombuffer(sums, "<f8")[None, :], np.frombuffer(mins, "<f8")[None, :],
                np.frombuffer(maxs, "<f8")[None, :]))
    return {d: _assemble(p) for d, p in parts.items()}


def _read_pg(conn: Connection, where: list[Any], parts: dict[str, list[Any]]) -> None:
    """One row per device: its buckets as one blob of fixed-size records (bucket start, then
    the counts, sums, mins and maxs arrays), concatenated in bucket order by ``string_agg``.
    The rows come in the primary key's order, so there is no sort of all of them (which
    spilled to disk), one sort per device instead of five, and the results come in
    PostgreSQL's binary format (the text format doubles bytea into hex). A device whose buckets
    carry more than one channel list is read again, one row per channel list."""
    from sqlalchemy.dialects.postgresql import aggregate_order_by

    u = _rollups.c
    record = func.float8send(u.bucket).op("||")(u.counts).op("||")(u.sums).op("||")(
        u.mins).op("||")(u.maxs)
    blob = func.string_agg(record, aggregate_order_by(literal(b"", LargeBinary), u.bucket))
    mixed: list[str] = []
    for device_id, first, last, data in _fetch(conn, select(
            u.device_id, func.min(u.channels), func.max(u.channels), blob)
            .where(*where).group_by(u.device_id)):
        if first != last:
            mixed.append(device_id)
            continue
        parts.setdefault(device_id, []).append(_decoded(first, data))
    if mixed:
        for device_id, channels, data in _fetch(conn, select(u.device_id, u.channels, blob)
                                                .where(*where, pg_bulk.in_list(
                                                    u.device_id, mixed, "postgresql"))
                                                .group_by(u.device_id, u.channels)):
            parts.setdefault(device_id, []).append(_decoded(channels, data))


def _decoded(channels: str, data: bytes) -> tuple[list[str], np.ndarray, np.ndarray,
                                                  np.ndarray, np.ndarray, np.ndarray]:
    names = json.loads(channels)
    k = len(names)
    records = np.frombuffer(data, dtype=np.dtype([
        ("ts", ">f8"), ("count", "<i8", (k,)), ("sum", "<f8", (k,)), ("min", "<f8", (k,)),
        ("max", "<f8", (k,))]))
    return (names, records["ts"], records["count"], records["sum"], records["min"],
            records["max"])


def _fetch(conn: Connection, stmt: Any) -> list[Any]:
    """Rows of ``stmt``; with psycopg, asked for in the binary format."""
    if conn.dialect.driver != "psycopg":
        return list(conn.execute(stmt))
    compiled = stmt.compile(dialect=conn.dialect)
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor(binary=True) as cursor:
        cursor.execute(str(compiled), compiled.params)
        rows: list[Any] = cursor.fetchall()
    return rows


def _assemble(parts: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                np.ndarray]]) -> dict[str, Any]:
    """One device's pieces (one per channel list) on one time axis and one channel list."""
    channels = sorted({c for p in parts for c in p[0]})
    if len(parts) == 1 and parts[0][0] == channels:
        # the usual case (one channel list, buckets in order): the arrays as they came
        _, ts, n, s, mn, mx = parts[0]
        return _finished(channels, ts.astype(np.float64), n.astype(np.int64), s.copy(),
                         mn.copy(), mx.copy())
    col = {c: i for i, c in enumerate(channels)}
    ts = np.unique(np.concatenate([p[1] for p in parts]))
    row = {t: i for i, t in enumerate(ts.tolist())}
    shape = (len(ts), len(channels))
    count = np.zeros(shape, dtype=np.int64)
    total = np.zeros(shape)
    lo = np.full(shape, np.nan)
    hi = np.full(shape, np.nan)
    for names, t, n, s, mn, mx in parts:
        rows = np.array([row[x] for x in t.tolist()])
        cols = np.array([col[c] for c in names])
        idx = np.ix_(rows, cols)
        count[idx] += n
        total[idx] += s
        lo[idx] = np.fmin(lo[idx], mn)
        hi[idx] = np.fmax(hi[idx], mx)
    return _finished(channels, ts, count, total, lo, hi)


def _finished(channels: list[str], ts: np.ndarray, count: np.ndarray, total: np.ndarray,
              lo: np.ndarray, hi: np.ndarray) -> dict[str, Any]:
    """The device's view: mean from the sums, NaN where a channel had no reading."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    lo[count == 0] = np.nan
    hi[count == 0] = np.nan
    return {"channels": channels, "ts": ts, "count": count, "mean": mean, "min": lo, "max": hi}
