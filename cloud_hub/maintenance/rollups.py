"""Fold raw telemetry rows into per-channel 1-minute and 1-hour buckets (count, sum, min, max).

Rows are folded in the order they were stored, from a mark kept in the database
(:class:`~cloud_hub.db.rollup_tables.MaintenanceMark` ``rollups``: the (stored_at, device,
epoch, seq) of the last row folded), in the same transaction as the buckets they add to, so a
row is folded exactly once even if the job moves to another hub process. Only rows stored at
least ``settle_s`` ago are taken: a transaction still open in another hub process may commit a
row whose ``stored_at`` is a little older than rows already committed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlalchemy import Float, String, Table, case, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cloud_hub.db import pg_bulk
from cloud_hub.db.rollup_tables import MaintenanceMark, TelemetryRollup
from cloud_hub.db.tables import TelemetryBatchRow

__all__ = ["RESOLUTIONS", "fold_rollups", "folded_mark", "folded_through", "read_rollups"]

RESOLUTIONS = {"1m": 60.0, "1h": 3600.0}
MARK = "rollups"
_rows: Table = TelemetryBatchRow.__table__  # type: ignore[attr-defined]
_rollups: Table = TelemetryRollup.__table__  # type: ignore[attr-defined]
_marks: Table = MaintenanceMark.__table__  # type: ignore[attr-defined]
_COLUMNS: pg_bulk.Columns = (("device_id", String), ("resolution", String), ("bucket", Float),
                             ("channel", String), ("count", Float), ("sum", Float),
                             ("min", Float), ("max", Float))

Bucket = tuple[str, str, float, str]  # device, resolution, bucket start, channel


def folded_through(conn: Connection) -> float:
    """Every row stored at or before this instant is folded into the rollups."""
    row = conn.execute(select(_marks.c.value).where(_marks.c.name == MARK)).first()
    return float(row[0]) if row else 0.0


def folded_mark(conn: Connection) -> tuple[float, tuple[str, str, int]]:
    """(stored_at, (device_id, epoch, seq)) of the last row folded: every row at or before it
    in that order is in the rollups."""
    row = conn.execute(select(_marks.c.value, _marks.c.key).where(_marks.c.name == MARK)).first()
    if row is None:
        return 0.0, ("", "", -1)
    key: list[Any] = json.loads(row[1]) if row[1] else ["", "", -1]
    return float(row[0]), (str(key[0]), str(key[1]), int(key[2]))


def _accumulate(into: dict[Bucket, list[float]], device_id: str, channels: list[str],
                ts: np.ndarray, values: np.ndarray) -> None:
    for resolution, width in RESOLUTIONS.items():
        starts = np.floor(ts / width) * width
        order = np.argsort(starts, kind="stable")
        starts, rows = starts[order], values[order]
        edges = np.flatnonzero(np.diff(starts)) + 1
        begin = np.concatenate(([0], edges))
        counts = np.diff(np.concatenate((begin, [len(starts)])))
        sums = np.add.reduceat(rows, begin, axis=0)
        mins = np.minimum.reduceat(rows, begin, axis=0)
        maxs = np.maximum.reduceat(rows, begin, axis=0)
        for i, b in enumerate(starts[begin]):
            for c, channel in enumerate(channels):
                key = (device_id, resolution, float(b), channel)
                acc = into.get(key)
                n, s, lo, hi = int(counts[i]), float(sums[i, c]), float(mins[i, c]), float(
                    maxs[i, c])
                if acc is None:
                    into[key] = [n, s, lo, hi]
                else:
                    acc[0] += n
                    acc[1] += s
                    acc[2] = min(acc[2], lo)
                    acc[3] = max(acc[3], hi)


def _upsert(conn: Connection, buckets: dict[Bucket, list[float]]) -> None:
    if not buckets:
        return
    rows = [{"device_id": k[0], "resolution": k[1], "bucket": k[2], "channel": k[3],
             "count": v[0], "sum": v[1], "min": v[2], "max": v[3]}
            for k, v in sorted(buckets.items())]
    pg = conn.dialect.name == "postgresql"
    if pg:
        source = pg_bulk.unnest_select(_COLUMNS)
        insert: Any = postgresql.insert(_rollups).from_select([n for n, _ in _COLUMNS], source)
    else:
        insert = sqlite.insert(_rollups)
    new, old = insert.excluded, _rollups.c
    stmt = insert.on_conflict_do_update(
        index_elements=["device_id", "resolution", "bucket", "channel"],
        set_={"count": old.count + new.count, "sum": old.sum + new.sum,
              "min": case((new.min < old.min, new.min), else_=old.min),
              "max": case((new.max > old.max, new.max), else_=old.max)})
    conn.execute(stmt, pg_bulk.as_arrays(rows, [n for n, _ in _COLUMNS]) if pg else rows)


def fold_rollups(conn: Connection, *, now: float | None = None, settle_s: float = 30.0,
                 limit: int = 2000) -> int:
    """Fold up to ``limit`` rows stored since the mark (in the caller's transaction; the
    caller commits). Returns how many rows were folded."""
    now = time.time() if now is None else now
    at, key = folded_mark(conn)
    r = _rows.c
    position = tuple_(r.stored_at, r.device_id, r.epoch, r.seq)
    rows = conn.execute(
        select(r.device_id, r.epoch, r.seq, r.stored_at, r.channels, r.ts_blob, r.values_blob)
        .where(position > tuple_(_lit(at), _lit(key[0]), _lit(key[1]), _lit(key[2])),
               r.stored_at <= now - settle_s)
        .order_by(r.stored_at, r.device_id, r.epoch, r.seq)
        .limit(limit)).all()
    if not rows:
        return 0
    buckets: dict[Bucket, list[float]] = {}
    for device_id, _epoch, _seq, _stored, channels, ts_blob, values_blob in rows:
        names = channels if isinstance(channels, list) else json.loads(channels)
        ts = np.frombuffer(ts_blob, dtype="<f8")
        values = np.frombuffer(values_blob, dtype="<f8").reshape(len(ts), len(names))
        _accumulate(buckets, device_id, names, ts, values)
    _upsert(conn, buckets)
    last = rows[-1]
    _set_mark(conn, float(last[3]), [last[0], last[1], int(last[2])], now)
    return len(rows)


def _lit(value: Any) -> Any:
    return literal(value)


def _set_mark(conn: Connection, value: float, key: Iterable[Any], now: float) -> None:
    text = json.dumps(list(key))
    dialect = conn.dialect.name
    insert: Any = postgresql.insert(_marks) if dialect == "postgresql" else sqlite.insert(_marks)
    conn.execute(insert.values(name=MARK, value=value, key=text, updated_at=now)
                 .on_conflict_do_update(index_elements=["name"],
                                        set_={"value": value, "key": text, "updated_at": now}))


def read_rollups(conn: Connection, *, device_ids: list[str], resolution: str,
                 since: float | None, until: float | None) -> dict[str, dict[str, Any]]:
    """Each device's buckets in [since, until): ``ts`` (bucket starts), ``channels``, and per
    bucket and channel ``count``, ``mean``, ``min``, ``max`` (None where a channel has no
    reading in a bucket). One query for all the devices."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution {resolution!r} is not one of {sorted(RESOLUTIONS)}")
    u = _rollups.c
    stmt = (select(u.device_id, u.bucket, u.channel, u.count, u.sum, u.min, u.max)
            .where(pg_bulk.in_list(u.device_id, device_ids, conn.dialect.name),
                   u.resolution == resolution)
            .order_by(u.device_id, u.bucket, u.channel))
    if since is not None:
        stmt = stmt.where(u.bucket >= float(np.floor(since / RESOLUTIONS[resolution]))
                          * RESOLUTIONS[resolution])
    if until is not None:
        stmt = stmt.where(u.bucket < until)
    raw: dict[str, dict[float, dict[str, tuple[int, float, float, float]]]] = {}
    for device_id, bucket, channel, count, total, lo, hi in conn.execute(stmt):
        raw.setdefault(device_id, {}).setdefault(float(bucket), {})[channel] = (
            int(count), float(total), float(lo), float(hi))
    out: dict[str, dict[str, Any]] = {}
    for device_id, buckets in raw.items():
        channels = sorted({c for b in buckets.values() for c in b})
        ts = sorted(buckets)
        cells = [[buckets[t].get(c) for c in channels] for t in ts]
        out[device_id] = {
            "channels": channels, "ts": ts,
            "count": [[x[0] if x else 0 for x in row] for row in cells],
            "mean": [[x[1] / x[0] if x else None for x in row] for row in cells],
            "min": [[x[2] if x else None for x in row] for row in cells],
            "max": [[x[3] if x else None for x in row] for row in cells],
        }
    return out
