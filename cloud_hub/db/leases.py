"""Leases in the database, so that a singleton job runs in one hub process at a time.

Several hub processes may share one database (PostgreSQL). A job such as incident grouping must
not run in two of them at once, or both would open an incident for the same events. Each tick a
process takes or renews the job's lease with one conditional UPDATE; whoever holds an unexpired
lease runs the tick, the others skip it. A process that dies loses the lease after ``ttl_s``.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from cloud_hub.db.ops_tables import JobLease

__all__ = ["hold_lease", "release_lease"]


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
