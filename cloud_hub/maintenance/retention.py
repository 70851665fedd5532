"""Retention: what is old enough goes, in bounded deletes, so no statement holds the database
for long and every table stays bounded.

- raw telemetry stored more than ``raw_days`` ago, and only once the rollups have folded it
  (``stored_at`` before their mark): the rollups then answer for that time;
- rollups older than ``rollup_days`` (400 by default);
- dead letters older than ``dead_letter_days``, and training jobs finished ``jobs_days`` ago,
  with the training data uploaded for them (``training_uploads``).

Each call deletes at most ``batch`` rows per kind; the job calls again at once while a kind
had a full batch. Deleted telemetry seqs are recorded on their stream's mark
(``pruned_through``), so the telemetry summary does not count them as missing, and their keys
(``telemetry_keys``) go with them.

On PostgreSQL, raw telemetry lives in day partitions (:mod:`cloud_hub.db.partitions`), dropped
whole by :func:`cloud_hub.db.partitions.drop_expired`: the bounded deletes here touch only the
rows no day partition holds (the default and legacy partitions), never a day partition's rows
one by one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    MetaData,
    String,
    Table,
    and_,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection

from cloud_hub.core.states import JobStatus
from cloud_hub.db import partitions
from cloud_hub.db.registry_tables import TrainingJob, TrainingUpload
from cloud_hub.db.rollup_tables import TelemetryRollup
from cloud_hub.db.tables import DeadLetter, StreamMark, TelemetryBatchRow, TelemetryKey
from cloud_hub.maintenance.rollups import folded_mark

__all__ = ["RetentionPolicy", "prune"]

_DAY = 86_400.0


@dataclass(frozen=True)
class RetentionPolicy:
    raw_days: float = 30.0
    rollup_days: float = 400.0
    dead_letter_days: float = 30.0
    jobs_days: float = 90.0
    batch: int = 5000


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


def _delete_keys(conn: Connection, table: Table, keys: list[Any],
                 key_columns: Iterable[Any]) -> int:
    if not keys:
        return 0
    cols = list(key_columns)
    return int(conn.execute(delete(table).where(tuple_(*cols).in_(keys))).rowcount or 0)


def _row_sources(conn: Connection) -> list[Table]:
    """Where retention deletes telemetry rows one by one: the table itself, or on a
    partitioned PostgreSQL table only its partitions that are not days."""
    found = partitions.list_partitions(conn)  # none: not partitioned
    if not found:
        return [_table(TelemetryBatchRow)]
    columns = ("device_id", String), ("epoch", String), ("seq", BigInteger), (
        "ts_first", Float), ("stored_at", Float)
    return [Table(p.name, MetaData(), *[Column(n, t) for n, t in columns])
            for p in found if p.day is None]


def _prune_telemetry(conn: Connection, policy: RetentionPolicy, *, now: float) -> int:
    """Delete at most ``policy.batch`` telemetry rows old enough and folded, with their
    keys; record the seqs deleted on their streams' marks."""
    rows, keys_table = _table(TelemetryBatchRow), _table(TelemetryKey)
    r, k = rows.c, keys_table.c
    at, key = folded_mark(conn)
    old: list[tuple[str, str, int, float]] = []
    for source in _row_sources(conn):
        s = source.c
        folded = tuple_(s.stored_at, s.device_id, s.epoch, s.seq) <= tuple_(
            literal(at), literal(key[0]), literal(key[1]), literal(key[2]))
        old += [(d, e, int(q), float(f)) for d, e, q, f in conn.execute(
            select(s.device_id, s.epoch, s.seq, s.ts_first)
            .where(s.stored_at < now - policy.raw_days * _DAY, folded)
            .limit(policy.batch - len(old)))]
        if len(old) >= policy.batch:
            break
    if not old:
        return 0
    deleted = _delete_keys(conn, rows, [(d, f, e, q) for d, e, q, f in old],
                           (r.device_id, r.ts_first, r.epoch, r.seq))
    _delete_keys(conn, keys_table, [(d, e, q) for d, e, q, _ in old],
                 (k.device_id, k.epoch, k.seq))
    pruned: dict[tuple[str, str], int] = {}
    for d, e, q, _ in old:
        pruned[(d, e)] = max(pruned.get((d, e), -1), q)
    marks = _table(StreamMark)
    m = marks.c
    for (d, e), seq in sorted(pruned.items()):
        conn.execute(update(marks).where(m.device_id == d, m.epoch == e, m.stream == "telemetry",
                                         m.pruned_through < seq).values(pruned_through=seq))
    return deleted


def prune(conn: Connection, policy: RetentionPolicy, *, now: float) -> dict[str, int]:
    """One bounded round of deletes (in the caller's transaction); rows deleted per kind."""
    done: dict[str, int] = {"telemetry": _prune_telemetry(conn, policy, now=now)}

    rollups = _table(TelemetryRollup)
    u = rollups.c
    old_rollups = conn.execute(
        select(u.device_id, u.resolution, u.bucket)
        .where(u.bucket < now - policy.rollup_days * _DAY).limit(policy.batch)).all()
    done["rollups"] = _delete_keys(conn, rollups, [tuple(k) for k in old_rollups],
                                   (u.device_id, u.resolution, u.bucket))

    letters = _table(DeadLetter)
    ids = conn.execute(select(letters.c.id).where(
        letters.c.received_at < now - policy.dead_letter_days * _DAY)
        .limit(policy.batch)).scalars().all()
    done["dead_letters"] = int(conn.execute(
        delete(letters).where(letters.c.id.in_(ids))).rowcount or 0) if ids else 0

    jobs = _table(TrainingJob)
    ids = conn.execute(select(jobs.c.id).where(
        jobs.c.status.in_([s for s in JobStatus if s.finished]),
        func.coalesce(jobs.c.finished_at, jobs.c.created_at) < now - policy.jobs_days * _DAY)
        .limit(policy.batch)).scalars().all()
    done["training_jobs"] = int(conn.execute(
        delete(jobs).where(jobs.c.id.in_(ids))).rowcount or 0) if ids else 0

    # Uploaded training data goes with its job; an upload whose job was never stored (the
    # request failed between the two) after a day.
    uploads = _table(TrainingUpload)
    names = conn.execute(select(uploads.c.name).where(or_(
        and_(uploads.c.job_id.is_not(None), ~exists().where(jobs.c.id == uploads.c.job_id)),
        and_(uploads.c.job_id.is_(None), uploads.c.created_at < now - _DAY)))
        .limit(policy.batch)).scalars().all()
    done["training_uploads"] = int(conn.execute(
        delete(uploads).where(uploads.c.name.in_(names))).rowcount or 0) if names else 0
    return done
