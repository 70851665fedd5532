"""The registry of enrolled devices: only these may send data, train models or take rollouts.

A device is enrolled by ``cloud-hub devices enroll`` (which also gives it a broker credential)
and revoked by ``cloud-hub devices revoke``; a revoked device may be enrolled again (with a new
credential). Its own table, so that a database made before enrollment existed gains it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel, col, select

from cloud_hub.db import pg_bulk
from cloud_hub.db.devices import ensure_devices
from cloud_hub.db.rollup_tables import MaintenanceMark

__all__ = ["AlreadyRevoked", "EnrolledCache", "Enrollment", "NotEnrolled", "enrolled_among",
           "record_enrollment", "record_revocation", "require_enrolled", "revocations"]

# A counter of revocations, moved in each revocation's transaction: a process that remembers
# which devices are enrolled (:class:`EnrolledCache`) reads it, one row by key, to learn that
# any hub process revoked one. A row of ``maintenance_marks`` (no table of its own, so no
# migration).
_REVOCATIONS = "enrollment_revocations"
_marks: Any = MaintenanceMark.__table__  # type: ignore[attr-defined]


class NotEnrolled(ValueError):
    """A device that is not (or no longer) enrolled was asked to do something."""


class AlreadyRevoked(NotEnrolled):
    """The device was enrolled and is revoked already."""


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollments"

    device_id: str = Field(primary_key=True, max_length=64)
    enrolled_at: float
    revoked_at: float | None = Field(default=None, index=True)
    broker_credential: bool = False  # the hub made the device's broker credential


def enrolled_among(session: Session, device_ids: Iterable[str]) -> set[str]:
    """Which of these devices are enrolled now (one query per 500 ids)."""
    wanted = sorted(set(device_ids))
    found: set[str] = set()
    dialect = session.get_bind().dialect.name
    # PostgreSQL: ``= ANY(:array)``, one statement text for any count (an expanded IN list of
    # 500 ids was rendered parameter by parameter on every ingest batch: 13% of its CPU).
    step = 5000 if dialect == "postgresql" else 500
    for i in range(0, len(wanted), step):
        part = wanted[i:i + step]
        found.update(session.exec(
            select(Enrollment.device_id).where(
                pg_bulk.in_list(col(Enrollment.device_id), part, dialect),
                col(Enrollment.revoked_at).is_(None))))
    return found


def require_enrolled(session: Session, device_ids: Iterable[str], what: str) -> None:
    """Raise :class:`NotEnrolled` naming the devices ``what`` may not use."""
    wanted = set(device_ids)
    missing = sorted(wanted - enrolled_among(session, wanted))
    if missing:
        shown = ", ".join(repr(d) for d in missing[:10]) + (" …" if len(missing) > 10 else "")
        raise NotEnrolled(f"{what}: device(s) {shown} are not enrolled "
                          "(cloud-hub devices enroll ID)")


def record_enrollment(session: Session, device_ids: list[str], *, broker_credential: bool,
                      now: float | None = None, device_rows: bool = True) -> None:
    """Enroll (or enroll again after a revocation) and commit; ``device_rows``: make the
    devices' rows too, so they are listed (and can take a rollout) before they connect."""
    at = now if now is not None else time.time()
    # The rows there already in one query per 500 ids, not a get() per device: each get()
    # flushed the rows added before it (10 s of 1,000 devices' 11 s in the database).
    known: dict[str, Enrollment] = {}
    for i in range(0, len(device_ids), 500):
        part = device_ids[i:i + 500]
        known.update((e.device_id, e) for e in session.exec(
            select(Enrollment).where(col(Enrollment.device_id).in_(part))))
    for device_id in device_ids:
        row = known.get(device_id)
        if row is None:
            session.add(Enrollment(device_id=device_id, enrolled_at=at,
                                   broker_credential=broker_credential))
        else:
            row.enrolled_at, row.revoked_at = at, None
            row.broker_credential = broker_credential
            session.add(row)
    if device_rows:
        ensure_devices(session, device_ids)
    session.commit()


def record_revocation(session: Session, device_id: str, *, now: float | None = None) -> float:
    row = session.get(Enrollment, device_id)
    if row is None:
        raise NotEnrolled(f"device {device_id!r} is not enrolled")
    if row.revoked_at is not None:
        raise AlreadyRevoked(f"device {device_id!r} is already revoked (at {row.revoked_at}); "
                             f"enroll it again to give it a new credential")
    row.revoked_at = now if now is not None else time.time()
    session.add(row)
    _count_revocation(session, row.revoked_at)
    session.commit()
    return row.revoked_at


def _count_revocation(session: Session, at: float) -> None:
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert(_marks) if dialect == "postgresql" else sqlite.insert(_marks)
    session.execute(insert.values(name=_REVOCATIONS, value=1.0, key="", updated_at=at)
                    .on_conflict_do_update(index_elements=["name"],
                                           set_={"value": _marks.c.value + 1,
                                                 "updated_at": at}))


def revocations(session: Session) -> int:
    """How many revocations were ever recorded (any process's): it changes with each one."""
    value = session.execute(_READ_REVOCATIONS).scalar_one_or_none()
    return int(value or 0)


_READ_REVOCATIONS = select(_marks.c.value).where(_marks.c.name == _REVOCATIONS)


class EnrolledCache:
    """Which devices are enrolled, remembered between ingest batches: ingest screens every
    batch (profiled: the screen's query was 9% of a PostgreSQL hub's time at batch 10).

    A device found enrolled is remembered until any revocation: each screen first reads the
    revocation counter (one row by key, in the caller's transaction), and a change forgets
    everything remembered. So a revocation committed by any hub process applies to every
    batch screened after it, as when each batch asked the registry. Devices not remembered
    (new, re-enrolled, or never enrolled) are asked for; a refusal is not remembered, so an
    enrollment needs no signal. Safe to share between threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._revocations = -1

    def among(self, session: Session, device_ids: Iterable[str]) -> set[str]:
        """Which of ``device_ids`` are enrolled now."""
        wanted = set(device_ids)
        seen = revocations(session)
        with self._lock:
            if seen != self._revocations:
                self._known = set()
                self._revocations = seen
            enrolled = wanted & self._known
        missing = wanted - enrolled
        if missing:
            found = enrolled_among(session, missing)
            with self._lock:
                if seen == self._revocations:  # no other thread saw a newer revocation since
                    self._known |= found
            enrolled |= found
        return enrolled
