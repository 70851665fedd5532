"""The maintenance job: fold new telemetry into rollups, then prune what retention allows, and
on PostgreSQL make the coming days' telemetry partitions and drop the expired ones.

Runs as a :class:`~cloud_hub.jobs.leased.LeasedWorker` (lease ``maintenance``), so in one hub
process at a time; all its progress is in the database.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine

from cloud_hub.db import partitions
from cloud_hub.db.leases import Lease, begin_under
from cloud_hub.maintenance.retention import RetentionPolicy, prune
from cloud_hub.maintenance.rollups import apply_pending, folded_mark, read_pending

__all__ = ["MaintenanceTick"]

log = logging.getLogger(__name__)


class MaintenanceTick:
    def __init__(self, engine: Engine, policy: RetentionPolicy, *, fold_limit: int = 2000,
                 settle_s: float = 30.0) -> None:
        self._engine = engine
        self.policy = policy
        self._fold_limit = fold_limit
        self._settle_s = settle_s
        self.folded = 0
        self.pruned: dict[str, int] = {}

    def __call__(self, now: float, lease: Lease | None = None) -> bool:
        """One round; True when a full batch was done (more is waiting). The fold and the
        prune commit under ``lease`` (:mod:`cloud_hub.db.leases`). The partitions are left
        unfenced: each change checks what it does under its own locks, so one made again by a
        process that lost the lease is refused (a day made twice) or finds nothing to do."""
        # Read and fold in memory outside any write transaction, then write in a short one:
        # on SQLite a write transaction holds the database's only write lock, and ingest
        # waited behind the folding (measured: storing stopped for ~30 s under overload).
        with self._engine.connect() as conn:
            pending = read_pending(conn, now=now, settle_s=self._settle_s,
                                   limit=self._fold_limit)
        folded = 0
        if pending is not None:
            with begin_under(lease, self._engine) as conn:
                folded = apply_pending(conn, pending, now=now)
        with begin_under(lease, self._engine) as conn:
            pruned = prune(conn, self.policy, now=now)
            folded_at, _ = folded_mark(conn)
        partitions.ensure_days(self._engine, now=now)
        dropped = partitions.drop_expired(self._engine, now=now,
                                          keep_s=self.policy.raw_days * partitions.DAY,
                                          folded_at=folded_at)
        if dropped:
            pruned["telemetry_partitions"] = len(dropped)
        self.folded += folded
        for kind, n in pruned.items():
            self.pruned[kind] = self.pruned.get(kind, 0) + n
        if any(pruned.values()):
            log.info("retention: deleted %s", {k: n for k, n in pruned.items() if n})
        full = pending is not None and pending.rows >= self._fold_limit
        return full or any(n >= self.policy.batch for n in pruned.values())
