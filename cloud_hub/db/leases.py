"""Leases in the database, so that a singleton job runs in one hub process at a time.

Several hub processes may share one database (PostgreSQL). A job such as incident grouping must
not run in two of them at once, or both would open an incident for the same events. Each tick a
process takes or renews the job's lease with one conditional UPDATE; whoever holds an unexpired
lease runs the tick, the others skip it. A process that dies loses the lease after ``ttl_s``.
:class:`Lease` is how a process keeps one: renewed only when a third of its ttl has passed.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from cloud_hub.db.ops_tables import JobLease

__all__ = ["Lease", "hold_lease", "release_lease"]

log = logging.getLogger(__name__)


def hold_lease(session: Session, *, name: str, holder: str, now: float, ttl_s: float) -> bool:
    """Take or renew the lease ``name`` for ``holder``; True if ``holder`` now has it.

    Commits the session's transaction.
    """
    taken = session.exec(
        update(JobLease)
        .where(col(JobLease.name) == name)
        .where((col(JobLease.holder) == holder) | (col(JobLease.expires_at) < now))
        .values(holder=holder, expires_at=now + ttl_s)
    ).rowcount
    session.commit()
    if taken:
        return True
    if session.get(JobLease, name) is not None:
        return False  # held by another process
    try:
        session.add(JobLease(name=name, holder=holder, expires_at=now + ttl_s))
        session.commit()
    except IntegrityError:  # another process created it first
        session.rollback()
        return False
    return True


def release_lease(session: Session, *, name: str, holder: str) -> None:
    """Give up the lease ``name`` if ``holder`` has it (a process stopping cleanly), so that
    another process takes it at once instead of after its ttl. Commits."""
    session.exec(update(JobLease).where(col(JobLease.name) == name)
                 .where(col(JobLease.holder) == holder).values(expires_at=0.0))
    session.commit()


class Lease:
    """The lease ``name`` as this process keeps it.

    :meth:`keep` takes it, or renews it when a third of ``ttl_s`` has passed since the last
    renewal that held (each renewal is a write transaction, so not one per tick).
    ``held`` says whether this process had it at the last renewal, and ``taken_over`` whether
    the last :meth:`keep` took it (it was not held before: a job that leads owes the work its
    previous holder may have left). :meth:`lost` forgets it (after a failure, which may have
    been the lease's own), so that the next :meth:`keep` renews first, and counts as taking
    it over."""

    def __init__(self, engine: Engine, *, name: str, holder: str, ttl_s: float) -> None:
        self._engine = engine
        self.name, self.holder, self.ttl_s = name, holder, ttl_s
        self.held = self.taken_over = False
        self._renewed_at = float("-inf")  # monotonic time of the last renewal that held

    def keep(self) -> bool:
        """Take or renew the lease when due; True while this process holds it. Raises what
        the database raises."""
        self.taken_over = False
        if self.held and time.monotonic() - self._renewed_at < self.ttl_s / 3:
            return True
        renewing, was = time.monotonic(), self.held
        with Session(self._engine) as session:
            self.held = hold_lease(session, name=self.name, holder=self.holder,
                                   now=time.time(), ttl_s=self.ttl_s)
        self.taken_over = self.held and not was
        if self.held:
            self._renewed_at = renewing
        return self.held

    def lost(self) -> None:
        self.held = False

    def release(self) -> None:
        """Give the lease up if held (a clean stop), so another process takes it at once; on
        failure it expires on its own."""
        if not self.held:
            return
        self.held = False
        try:
            with Session(self._engine) as session:
                release_lease(session, name=self.name, holder=self.holder)
        except Exception:
            log.warning("the %s lease was not given up; it expires in %.0fs", self.name,
                        self.ttl_s, exc_info=True)
