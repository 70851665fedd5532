"""Fold raw telemetry rows into per-channel 1-minute and 1-hour buckets (count, sum, min, max).

Rows are folded in the order they were stored, from a mark kept in the database
(:class:`~cloud_hub.db.rollup_tables.MaintenanceMark` ``rollups``: the (stored_at, device,
epoch, seq) of the last row folded), in the same transaction as the buckets they add to, and
with the mark's row locked first, so a row is folded exactly once even if the job moves to
another hub process. Only rows stored at least ``settle_s`` ago are taken: a transaction still
open in another hub process may commit a row whose ``stored_at`` is a little older than rows
already committed. A bucket row is read, merged and written back (one folder at a time, by the
lock), its channels' statistics packed as arrays (:class:`TelemetryRollup`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Float, LargeBinary, String, Table, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cloud_hub.db import pg_bulk
from cloud_hub.db.rollup_tables import MaintenanceMark, TelemetryRollup
from cloud_hub.db.tables import TelemetryBatchRow

__all__ = ["RESOLUTIONS", "PendingFold", "apply_pending", "fold_rollups", "folded_mark",
           "read_pending", "read_rollups"]

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


def _accumulate(into: dict[BucketKey, Stats], device_id: str, channels: list[str],
                ts: np.ndarray, values: np.ndarray) -> None:
    for resolution, width in RESOLUTIONS.items():
        starts = np.floor(ts / width) * width
        order = np.argsort(starts, kind="stable")
        starts, rows = starts[order], values[order]
        begin = np.concatenate(([0], np.flatnonzero(np.diff(starts)) + 1))
        counts = np.diff(np.concatenate((begin, [len(starts)])))
        sums = np.add.reduceat(rows, begin, axis=0)
        mins = np.minimum.reduceat(rows, begin, axis=0)
        maxs = np.maximum.reduceat(rows, begin, axis=0)
        for i, b in enumerate(starts[begin]):
            stats = into.setdefault((device_id, resolution, float(b)), {})
            for c, channel in enumerate(channels):
                _merge(stats, channel, [float(counts[i]), float(sums[i, c]), float(mins[i, c]),
                                        float(maxs[i, c])])


def _merge(stats: Stats, channel: str, add: list[float]) -> None:
    acc = stats.get(channel)
    if acc is None:
        stats[channel] = list(add)
        return
    acc[0] += add[0]
    acc[1] += add[1]
    acc[2] = min(acc[2], add[2])
    acc[3] = max(acc[3], add[3])


def _unpack(channels: str, counts: bytes, sums: bytes, mins: bytes, maxs: bytes) -> Stats:
    names = json.loads(channels)
    n, s = np.frombuffer(counts, "<i8"), np.frombuffer(sums, "<f8")
    lo, hi = np.frombuffer(mins, "<f8"), np.frombuffer(maxs, "<f8")
    return {c: [float(n[i]), float(s[i]), float(lo[i]), float(hi[i])]
            for i, c in enumerate(names)}


def _pack(key: BucketKey, stats: Stats) -> dict[str, Any]:
    names = sorted(stats)
    cols = np.array([stats[c] for c in names], dtype="<f8")
    return {"device_id": key[0], "resolution": key[1], "bucket": key[2],
            "channels": json.dumps(names), "counts": cols[:, 0].astype("<i8").tobytes(),
            "sums": cols[:, 1].tobytes(), "mins": cols[:, 2].tobytes(),
            "maxs": cols[:, 3].tobytes()}


def _write(conn: Connection, buckets: dict[BucketKey, Stats]) -> None:
    """Merge ``buckets`` into the stored ones (read, add, write back)."""
    if not buckets:
        return
    keys = sorted(buckets)
    u = _rollups.c
    for device_id in sorted({k[0] for k in keys}):
        mine = [k for k in keys if k[0] == device_id]
        stored = conn.execute(
            select(u.resolution, u.bucket, u.channels, u.counts, u.sums, u.mins, u.maxs)
            .where(u.device_id == device_id, u.bucket >= min(k[2] for k in mine),
                   u.bucket <= max(k[2] for k in mine)))
        for resolution, bucket, channels, counts, sums, mins, maxs in stored:
            key = (device_id, resolution, float(bucket))
            if key in buckets:
                for channel, acc in _unpack(channels, counts, sums, mins, maxs).items():
                    _merge(buckets[key], channel, acc)
    rows = [_pack(k, buckets[k]) for k in keys]
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
    buckets: dict[BucketKey, Stats]
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
        select(r.device_id, r.epoch, r.seq, r.stored_at, r.channels, r.ts_blob, r.values_blob)
        .where(position > tuple_(literal(at), literal(key[0]), literal(key[1]),
                                 literal(key[2])),
               r.stored_at <= now - settle_s)
        .order_by(r.stored_at, r.device_id, r.epoch, r.seq)
        .limit(limit)).all()
    if not rows:
        return None
    # One numpy pass per (device, channel list), not per row: a batch of 2,000 rows from 100
    # devices is 100 passes instead of 2,000.
    groups: dict[tuple[str, tuple[str, ...]], tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for device_id, _epoch, _seq, _stored, channels, ts_blob, values_blob in rows:
        names = tuple(channels if isinstance(channels, list) else json.loads(channels))
        ts = np.frombuffer(ts_blob, dtype="<f8")
        values = np.frombuffer(values_blob, dtype="<f8").reshape(len(ts), len(names))
        t, v = groups.setdefault((device_id, names), ([], []))
        t.append(ts)
        v.append(values)
    buckets: dict[BucketKey, Stats] = {}
    for (device_id, names), (t, v) in groups.items():
        _accumulate(buckets, device_id, list(names), np.concatenate(t), np.concatenate(v))
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


def read_rollups(conn: Connection, *, device_ids: list[str], resolution: str,
                 since: float | None, until: float | None) -> dict[str, dict[str, Any]]:
    """Each device's buckets in [since, until): ``ts`` (bucket starts, an array), ``channels``,
    and 2-D arrays (bucket x channel) ``count``, ``mean``, ``min``, ``max`` (NaN where a
    channel had no reading in a bucket). One query for all the devices; on PostgreSQL each
    device's buckets come back concatenated (``string_agg``), decoded by numpy at once
    (:func:`_read_pg`)."""
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
    from sqlalchemy import func
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
    col = {c: i for i, c in enumerate(channels)}
    ts = np.unique(np.concatenate([p[1] for p in parts]))
    row = {t: i for i, t in enumerate(ts.tolist())}
    shape = (len(ts), len(channels))
    count = np.zeros(shape, dtype=np.int64)
    total = np.zeros(shape)
    lo = np.full(shape, np.nan)
    hi = np.full(shape, np.nan)
    for names, t, n, s, mn, mx in parts:
        if len(parts) == 1 and names == channels:
            count, total, lo, hi = n.copy(), s.copy(), mn.copy(), mx.copy()
            break
        rows = np.array([row[x] for x in t.tolist()])
        cols = np.array([col[c] for c in names])
        idx = np.ix_(rows, cols)
        count[idx] += n
        total[idx] += s
        lo[idx] = np.fmin(lo[idx], mn)
        hi[idx] = np.fmax(hi[idx], mx)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    lo[count == 0] = np.nan
    hi[count == 0] = np.nan
    return {"channels": channels, "ts": ts, "count": count, "mean": mean, "min": lo, "max": hi}
