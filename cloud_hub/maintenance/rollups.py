"""Fold raw telemetry rows into per-channel 1-minute and 1-hour buckets (count, sum, min, max).

Rows are folded in the order they were stored, from a mark kept in the database
(:class:`~cloud_hub.db.rollup_tables.MaintenanceMark` ``rollups``: the (stored_at, device,
epoch, seq) of the last row folded), in the same transaction as the buckets they add to, and
with the mark's row locked first, so a row is folded exactly once even if the job moves to
another hub process. Only rows stored at least ``settle_s`` ago are taken: a transaction still
open in another hub process may commit a row whose ``stored_at`` is a little older than rows
already committed. A bucket row is read, merged and written back (one folder at a time, by the
lock), its channels' statistics packed as arrays (:class:`TelemetryRollup`). Reading them back
is :mod:`cloud_hub.maintenance.rollup_reads`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Float, LargeBinary, String, Table, cast, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cloud_hub.db import pg_bulk
from cloud_hub.db.rollup_tables import MaintenanceMark, TelemetryRollup
from cloud_hub.db.tables import TelemetryBatchRow

__all__ = ["RESOLUTIONS", "PendingFold", "apply_pending", "fold_rollups", "folded_mark",
           "read_pending"]

RESOLUTIONS = {"1m": 60.0, "1h": 3600.0}
MARK = "rollups"
_rows: Table = TelemetryBatchRow.__table__  # type: ignore[attr-defined]
_rollups: Table = TelemetryRollup.__table__  # type: ignore[attr-defined]
_marks: Table = MaintenanceMark.__table__  # type: ignore[attr-defined]
_COLUMNS: pg_bulk.Columns = (("device_id", String), ("resolution", String), ("bucket", Float),
                             ("channels", String), ("counts", LargeBinary),
                             ("sums", LargeBinary), ("mins", LargeBinary),
                             ("maxs", LargeBinary))

BucketKey = tuple[str, str, float]  # device, resolution, bucket start
Stats = dict[str, list[float]]  # channel -> [count, sum, min, max]
# A bucket being folded: its channel names (sorted) and a (4, channels) float64 array of
# count, sum, min and max. Arrays, not a list per channel: a fold of 2,000 rows merges a few
# hundred buckets of 8 channels, and per-channel Python lists cost more than reading the rows.
Bucket = tuple[tuple[str, ...], np.ndarray]


def folded_mark(conn: Connection, *, lock: bool = False) -> tuple[float, tuple[str, str, int]]:
    """(stored_at, (device_id, epoch, seq)) of the last row folded: every row at or before it
    in that order is in the rollups. ``lock``: hold the mark's row until the transaction ends
    (PostgreSQL), so two folders never fold the same rows."""
    stmt = select(_marks.c.value, _marks.c.key).where(_marks.c.name == MARK)
    row = conn.execute(stmt.with_for_update() if lock else stmt).first()
    if row is None:
        return 0.0, ("", "", -1)
    key: list[Any] = json.loads(row[1]) if row[1] else ["", "", -1]
    return float(row[0]), (str(key[0]), str(key[1]), int(key[2]))


def _accumulate(into: dict[BucketKey, Bucket], device_ids: Sequence[str], channels: Sequence[str],
                device: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
    """Fold readings of one channel list into ``into``: ``ts``, rows x channels ``values``
    and, per reading, its device as an index into ``device_ids``. Every device at once: numpy
    calls cost microseconds each whatever their size, so one pass over a fold's readings, not
    one per device, and Python only touches the buckets."""
    names = tuple(sorted(channels))
    if list(names) != list(channels):
        values = values[:, [list(channels).index(c) for c in names]]
    for resolution, width in RESOLUTIONS.items():
        starts = np.floor(ts / width) * width
        order = np.lexsort((starts, device))
        starts, devices, rows = starts[order], device[order], values[order]
        edge = np.empty(len(starts), dtype=bool)
        edge[0] = True
        np.not_equal(starts[1:], starts[:-1], out=edge[1:])
        edge[1:] |= devices[1:] != devices[:-1]
        begin = np.flatnonzero(edge)
        counts = np.diff(np.append(begin, len(starts))).astype("<f8")
        sums = np.add.reduceat(rows, begin, axis=0)
        stacked = np.stack((np.broadcast_to(counts[:, None], sums.shape), sums,
                            np.minimum.reduceat(rows, begin, axis=0),
                            np.maximum.reduceat(rows, begin, axis=0)), axis=1)
        for d, b, stats in zip(devices[begin].tolist(), starts[begin].tolist(), stacked,
                               strict=True):
            key = (device_ids[d], resolution, b)
            old = into.get(key)
            into[key] = (names, stats) if old is None else _merged(old, (names, stats))


def _merged(a: Bucket, b: Bucket) -> Bucket:
    """Two partial folds of one bucket as one (channel lists may differ)."""
    if a[0] == b[0]:
        x, y = a[1], b[1]
        return a[0], np.stack((x[0] + y[0], x[1] + y[1], np.minimum(x[2], y[2]),
                               np.maximum(x[3], y[3])))
    names = tuple(sorted(set(a[0]) | set(b[0])))
    out = np.empty((4, len(names)))
    out[:2], out[2], out[3] = 0.0, np.inf, -np.inf
    for part_names, part in (a, b):
        at = [names.index(c) for c in part_names]
        out[0, at] += part[0]
        out[1, at] += part[1]
        out[2, at] = np.minimum(out[2, at], part[2])
        out[3, at] = np.maximum(out[3, at], part[3])
    return names, out


def _bucket(stats: Stats) -> Bucket:
    """The array form of per-channel [count, sum, min, max] lists."""
    names = tuple(sorted(stats))
    return names, np.array([stats[c] for c in names], dtype="<f8").T.copy()


@functools.lru_cache(maxsize=4096)
def _names(channels: str) -> tuple[str, ...]:
    return tuple(json.loads(channels))


@functools.lru_cache(maxsize=4096)
def _names_json(names: tuple[str, ...]) -> str:
    return json.dumps(list(names))


def _pack(key: BucketKey, bucket: Bucket) -> dict[str, Any]:
    names, stats = bucket
    return {"device_id": key[0], "resolution": key[1], "bucket": key[2],
            "channels": _names_json(names), "counts": stats[0].astype("<i8").tobytes(),
            "sums": stats[1].astype("<f8").tobytes(), "mins": stats[2].astype("<f8").tobytes(),
            "maxs": stats[3].astype("<f8").tobytes()}


_KEY_COLUMNS: pg_bulk.Columns = (("device_id", String), ("resolution", String),
                                 ("bucket", Float))
_KEYS_PER_STATEMENT = 3000  # SQLite: 3 parameters each, under its 32,766


def _stored(conn: Connection, keys: list[BucketKey]) -> Iterator[Any]:
    """The stored bucket rows of ``keys``: one statement (a join with the keys as arrays on
    PostgreSQL, row values IN a list on SQLite), not one per device."""
    u = _rollups.c
    columns = (u.device_id, u.resolution, u.bucket, u.channels, u.counts, u.sums, u.mins,
               u.maxs)
    if conn.dialect.name == "postgresql":
        wanted = pg_bulk.unnest_rows(_KEY_COLUMNS, name="k")
        stmt = select(*columns).join(wanted, (u.device_id == wanted.c.device_id)
                                     & (u.resolution == wanted.c.resolution)
                                     & (u.bucket == wanted.c.bucket))
        yield from conn.execute(stmt, {"device_id": [k[0] for k in keys],
                                       "resolution": [k[1] for k in keys],
                                       "bucket": [k[2] for k in keys]})
        return
    for start in range(0, len(keys), _KEYS_PER_STATEMENT):
        part = keys[start:start + _KEYS_PER_STATEMENT]
        yield from conn.execute(select(*columns).where(
            tuple_(u.device_id, u.resolution, u.bucket).in_(part)))


def _write(conn: Connection, buckets: Mapping[BucketKey, Bucket | Stats]) -> None:
    """Merge ``buckets`` into the stored ones (read, add, write back)."""
    if not buckets:
        return
    merged = {k: _bucket(b) if isinstance(b, dict) else b for k, b in buckets.items()}
    keys = sorted(merged)
    for device_id, resolution, bucket, channels, counts, sums, mins, maxs in _stored(conn, keys):
        key = (device_id, resolution, float(bucket))
        stored = np.stack((np.frombuffer(counts, "<i8").astype("<f8"),
                           np.frombuffer(sums, "<f8"), np.frombuffer(mins, "<f8"),
                           np.frombuffer(maxs, "<f8")))
        merged[key] = _merged(merged[key], (_names(channels), stored))
    rows = [_pack(k, merged[k]) for k in keys]
    pg = conn.dialect.name == "postgresql"
    if pg:
        source = pg_bulk.unnest_select(_COLUMNS)
        insert: Any = postgresql.insert(_rollups).from_select([n for n, _ in _COLUMNS], source)
    else:
        insert = sqlite.insert(_rollups)
    new = insert.excluded
    stmt = insert.on_conflict_do_update(
        index_elements=["device_id", "resolution", "bucket"],
        set_={n: getattr(new, n) for n in ("channels", "counts", "sums", "mins", "maxs")})
    conn.execute(stmt, pg_bulk.as_arrays(rows, [n for n, _ in _COLUMNS]) if pg else rows)


@dataclass
class PendingFold:
    """Rows read past the mark, already folded into buckets in memory, not yet written."""

    mark: tuple[float, tuple[str, str, int]]  # the mark they were read after
    buckets: dict[BucketKey, Bucket]
    last: tuple[float, list[Any]]  # the new mark: the last row's (stored_at, key)
    rows: int


def read_pending(conn: Connection, *, now: float, settle_s: float = 30.0,
                 limit: int = 2000) -> PendingFold | None:
    """Read up to ``limit`` rows stored since the mark and fold them in memory. Only reads:
    the job runs this outside any write transaction, so on SQLite ingest keeps the write lock
    while the folding (numpy, under the GIL) runs; :func:`apply_pending` then writes."""
    mark = folded_mark(conn)
    at, key = mark
    r = _rows.c
    position = tuple_(r.stored_at, r.device_id, r.epoch, r.seq)
    rows = conn.execute(
        select(r.device_id, r.epoch, r.seq, r.stored_at, cast(r.channels, String), r.ts_blob,
               r.values_blob)
        .where(position > tuple_(literal(at), literal(key[0]), literal(key[1]),
                                 literal(key[2])),
               r.stored_at <= now - settle_s)
        .order_by(r.stored_at, r.device_id, r.epoch, r.seq)
        .limit(limit)).all()
    if not rows:
        return None
    # One numpy pass per channel list (all devices at once), not per row: the blobs of a
    # channel list are joined and decoded at once, its JSON text parsed once.
    device_index: dict[str, int] = {}
    groups: dict[str, tuple[list[bytes], list[bytes], list[int], list[int]]] = {}
    for device_id, _epoch, _seq, _stored, channels, ts_blob, values_blob in rows:
        group = groups.get(channels)
        if group is None:
            group = groups[channels] = ([], [], [], [])
        group[0].append(ts_blob)
        group[1].append(values_blob)
        group[2].append(device_index.setdefault(device_id, len(device_index)))
        group[3].append(len(ts_blob) // 8)
    device_ids = list(device_index)
    buckets: dict[BucketKey, Bucket] = {}
    for channels, (t, v, devices, lengths) in groups.items():
        names = _names(channels)
        ts = np.frombuffer(b"".join(t), dtype="<f8")
        values = np.frombuffer(b"".join(v), dtype="<f8").reshape(len(ts), len(names))
        _accumulate(buckets, device_ids, names, np.repeat(np.array(devices), lengths), ts,
                    values)
    last = rows[-1]
    return PendingFold(mark=mark, buckets=buckets,
                       last=(float(last[3]), [last[0], last[1], int(last[2])]), rows=len(rows))


def apply_pending(conn: Connection, pending: PendingFold, *, now: float) -> int:
    """Write ``pending`` into the rollups and move the mark (in the caller's transaction; the
    caller commits), unless another folder moved the mark since it was read: then nothing is
    written and 0 is returned (the next round reads again). Takes the write lock first (the
    mark's row), so the transaction holds it only for the merge and the write."""
    _ensure_mark(conn, now)
    if folded_mark(conn, lock=True) != pending.mark:
        return 0
    _write(conn, pending.buckets)
    _set_mark(conn, pending.last[0], pending.last[1], now)
    return pending.rows


def fold_rollups(conn: Connection, *, now: float | None = None, settle_s: float = 30.0,
                 limit: int = 2000) -> int:
    """Fold up to ``limit`` rows stored since the mark in the caller's transaction (read and
    write in one; the maintenance job splits them). Returns how many rows were folded."""
    now = time.time() if now is None else now
    _ensure_mark(conn, now)
    pending = read_pending(conn, now=now, settle_s=settle_s, limit=limit)
    return 0 if pending is None else apply_pending(conn, pending, now=now)


def _ensure_mark(conn: Connection, now: float) -> None:
    dialect = conn.dialect.name
    insert: Any = postgresql.insert(_marks) if dialect == "postgresql" else sqlite.insert(_marks)
    conn.execute(insert.values(name=MARK, value=0.0, key="", updated_at=now)
                 .on_conflict_do_nothing(index_elements=["name"]))


def _set_mark(conn: Connection, value: float, key: list[Any], now: float) -> None:
    conn.execute(_marks.update().where(_marks.c.name == MARK)
                 .values(value=value, key=json.dumps(key), updated_at=now))
