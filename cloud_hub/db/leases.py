"""Leases in the database, so that a singleton job runs in one hub process at a time.

Several hub processes may share one database (PostgreSQL). A job such as incident grouping must
not run in two of them at once, or both would open an incident for the same events. Each tick a
process takes or renews the job's lease with one conditional UPDATE; whoever holds an unexpired
lease runs the tick, the others skip it. A process that dies loses the lease after ``ttl_s``.
:class:`Lease` is how a process keeps one: renewed only when a third of its ttl has passed.

Holding the lease when a tick starts is not enough: a tick that stalls past the lease's expiry
(a GC pause, a starved thread, a slow database) would still commit after another process took
the lease over and ran the same tick. So a job's writes are *fenced*: every commit of a
:meth:`Lease.session` (or :meth:`Lease.begin`) first renews the lease in the same transaction,
only if no other process has taken it over (:func:`fence`); otherwise the transaction rolls
back and :class:`LeaseLost` is raised. A tick that outlived its lease while no other process
took it over commits: nobody else can have run it meanwhile, since taking a lease over writes
the taker's name in its row first; the fence that finds the lease expired logs a warning, as
that was a close call. A side effect outside the database (an MQTT publish) is
made after :func:`confirm_lease` in the transaction that records it, so that a process that lost
the lease makes none.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import NamedTuple

from sqlalchemy import event, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from cloud_hub.db.ops_tables import JobLease

__all__ = ["Lease", "LeaseLost", "Renewal", "begin_under", "confirm_lease", "fence",
           "hold_lease", "release_lease", "session_under"]

log = logging.getLogger(__name__)

_FENCED_BY = "edgeloop.lease"  # the key of a fenced session's lease in ``Session.info``


class LeaseLost(RuntimeError):
    """The lease is no longer this process's (another took it over): what was to commit under
    it was rolled back, and nothing outside the database was done for it."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"the {name} lease is no longer held by {holder} (another process "
                         f"took it over): this tick's writes were rolled back")
        self.name, self.holder = name, holder


class Renewal(NamedTuple):
    """What :func:`fence` did: the lease's new expiry, and how long after its expiry it was
    renewed if it had expired (None: renewed within its ttl, as a fence normally is)."""

    until: float
    late_s: float | None


def fence(connection: Connection, *, name: str, holder: str, ttl_s: float) -> Renewal:
    """In ``connection``'s transaction, renew the lease ``name`` if ``holder`` still holds it;
    raise :class:`LeaseLost` if not (the caller's transaction must then roll back).

    Still holds it: its row names ``holder``, expired or not. A lease that expired with nobody
    taking it over (one hub whose tick ran long under load, seen in bench/ingest.py's overload
    on PostgreSQL) is renewed, not lost: any process that took it over, and so might have run
    the tick meanwhile, wrote its own name in the row first. The expiry is what lets another
    process take a lease over, not proof that one did. Such a renewal is reported
    (``late_s``), so that the holder can say its commit came after its lease had expired.
    It costs one more statement, only then: a lease within its ttl is renewed by the first.

    The UPDATE keeps the lease's row locked until the transaction ends (on SQLite, the
    database's only write lock), so nobody takes the lease over before this transaction
    commits: a takeover is an UPDATE of the same row, which waits for this one and then finds
    the lease renewed (PostgreSQL, under READ COMMITTED, reads again the row it waited for and
    evaluates its WHERE on it). Conversely, a takeover that committed first leaves a row this
    WHERE does not match, and one in progress makes this UPDATE wait for it and then match
    nothing. Whatever commits after the fence commits while this process holds the lease."""
    now = time.time()
    held = (col(JobLease.name) == name, col(JobLease.holder) == holder)
    renew = update(JobLease).where(*held).values(expires_at=now + ttl_s)
    if connection.execute(renew.where(col(JobLease.expires_at) >= now)).rowcount:
        return Renewal(now + ttl_s, None)
    # Expired, or not ours: lock the row if it is still ours (a takeover that began meanwhile
    # either committed, and the row is not ours, or waits for this transaction).
    expired_at = connection.execute(
        select(col(JobLease.expires_at)).where(*held).with_for_update()).scalar_one_or_none()
    if expired_at is None or not connection.execute(renew).rowcount:
        raise LeaseLost(name, holder)
    return Renewal(now + ttl_s, now - expired_at)


def confirm_lease(session: Session) -> None:
    """Before a side effect outside the database (an MQTT publish) that ``session`` records:
    if the session commits under a lease (:meth:`Lease.session`), check in its transaction
    that the lease is still held, which also keeps anyone from taking it over until the
    transaction ends (:func:`fence`); :class:`LeaseLost` if not. Any other session (an admin's
    request, which may run in any hub process) is not fenced: nothing is done."""
    lease = session.info.get(_FENCED_BY)
    if isinstance(lease, Lease):
        lease.fence(session.connection())


def session_under(lease: Lease | None, engine: Engine) -> Session:
    """A session fenced by ``lease`` (:meth:`Lease.session`), or a plain one for a tick run
    by hand with no lease (tests, a one-off command)."""
    return lease.session() if lease is not None else Session(engine)


@contextlib.contextmanager
def begin_under(lease: Lease | None, engine: Engine) -> Iterator[Connection]:
    """:meth:`Lease.begin`, or ``engine.begin()`` with no lease (see :func:`session_under`)."""
    if lease is None:
        with engine.begin() as connection:
            yield connection
    else:
        with lease.begin() as connection:
            yield connection


def _fence_commit(session: Session) -> None:
    """``before_commit`` of a fenced session: its writes first, then the fence, last."""
    session.flush()
    confirm_lease(session)


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
        self._valid_until = float("-inf")  # wall-clock end of the lease confirmed last
        self.late_renewals = 0  # fences that renewed it after it had expired (see fence)

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

    def fence(self, connection: Connection) -> float:
        """:func:`fence` in ``connection``'s transaction; forgets the lease if it was lost.
        Returns the new expiry.

        A fence that found the lease expired renewed it only because no other process took
        the job over meanwhile: what it fences goes ahead, and nothing was run twice, but a
        starved process or a slow database came close to it. That is logged as a warning and
        counted in ``late_renewals``."""
        try:
            renewal = fence(connection, name=self.name, holder=self.holder, ttl_s=self.ttl_s)
        except LeaseLost:
            self.held = False
            raise
        if renewal.late_s is not None:
            self.late_renewals += 1
            log.warning("%s: renewed its lease %.1f s after it had expired (a %.0f-s lease); "
                        "the tick's writes go ahead because no other hub process took the job "
                        "over meanwhile (a starved process or a slow database?)",
                        self.name, renewal.late_s, self.ttl_s)
        return renewal.until

    def session(self) -> Session:
        """A session whose every commit is fenced: it commits only while this process holds
        the lease, else rolls back and raises :class:`LeaseLost` (closing the session, as its
        ``with`` block does, ends the transaction). Library code that publishes under a
        session calls :func:`confirm_lease` first."""
        session = Session(self._engine)
        session.info[_FENCED_BY] = self
        event.listen(session, "before_commit", _fence_commit)
        return session

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """``engine.begin()`` fenced: the block's transaction commits only while this process
        holds the lease (the fence is its last statement), else rolls back with
        :class:`LeaseLost`."""
        with self._engine.begin() as connection:
            yield connection
            self.fence(connection)

    def confirm(self) -> float:
        """Renew the lease in a transaction of its own, only if still held (:func:`fence`):
        for a side effect no transaction records (a webhook's delivery). Returns the wall-clock
        time until which the lease is this process's (:meth:`valid`). :class:`LeaseLost` if
        not held."""
        with self._engine.begin() as connection:
            until = self.fence(connection)
        self._valid_until = until
        return until

    def valid(self) -> bool:
        """Still within the lease confirmed last (:meth:`confirm`), by this host's clock: no
        other process can have taken it over yet (leases already assume the hubs' clocks
        agree)."""
        return self.held and time.time() < self._valid_until

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
