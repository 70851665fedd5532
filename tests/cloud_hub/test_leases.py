"""Leases kept by hub processes sharing a database: renewed only when a third of the ttl has
passed, never taken from a live holder, given up on a clean stop so another process takes the
job at once rather than after the ttl."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db.engine import make_engine
from cloud_hub.db.leases import Lease, LeaseLost, fence
from cloud_hub.db.ops_tables import JobLease
from cloud_hub.jobs.leased import LeasedWorker
from tests.cloud_hub.helpers import wait_for
from tests.pg import hub_engines

pytestmark = pytest.mark.hub


def _expires_at(engine: Engine, name: str) -> float:
    with Session(engine) as session:
        lease = session.get(JobLease, name)
        assert lease is not None
        return lease.expires_at


def test_a_lease_is_renewed_when_due_and_taken_at_once_after_its_release(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    first = Lease(engine, name="job", holder="hub-a", ttl_s=30.0)
    second = Lease(engine, name="job", holder="hub-b", ttl_s=30.0)
    assert first.keep() and first.held and first.taken_over
    taken_until = _expires_at(engine, "job")
    assert first.keep(), "renewing within a third of the ttl keeps it"
    assert not first.taken_over, "keeping a lease held is not taking it over"
    assert _expires_at(engine, "job") == taken_until, "no write before a third of the ttl"
    assert not second.keep() and not second.held, "a live holder keeps its lease"
    assert not second.taken_over

    first.lost()
    assert first.keep() and _expires_at(engine, "job") > taken_until, \
        "after a failure the next keep renews in the database"
    assert first.taken_over, "after a failure, what the lease guards is owed again"

    first.release()
    assert not first.held
    assert second.keep() and second.taken_over, \
        "a released lease is taken at once, not after its ttl"
    assert not first.keep() and not first.taken_over


def test_a_leased_worker_gives_its_lease_up_when_it_stops(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    ticked = threading.Event()

    def tick(_now: float, _lease: Lease) -> bool:
        ticked.set()
        return False

    worker = LeasedWorker(engine, name="job", tick=tick, interval_s=0.05, holder="hub-a")
    worker.start()
    try:
        assert ticked.wait(20), "the worker ticked"
        assert worker.holding
    finally:
        worker.stop()
    assert not worker.holding
    other = Lease(engine, name="job", holder="hub-b", ttl_s=15.0)
    wait_for(other.keep, 5, "another process takes the lease at once")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cloud_hub.db.leases"]


def _set_expiry(engine: Engine, name: str, expires_at: float) -> None:
    with Session(engine) as session:
        lease = session.get(JobLease, name)
        assert lease is not None
        lease.expires_at = expires_at
        session.add(lease)
        session.commit()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql",
                                                         marks=pytest.mark.postgres)])
def test_a_fence_says_when_it_renewed_an_expired_lease(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Within its ttl, a fence renews the lease and says nothing. Expired with nobody taking it
    over, it renews it and warns, naming how late it was. Taken over, it refuses."""
    with hub_engines(kind, tmp_path, 2) as (a_engine, b_engine):
        a = Lease(a_engine, name="job", holder="hub-a", ttl_s=30.0)
        b = Lease(b_engine, name="job", holder="hub-b", ttl_s=30.0)
        assert a.keep()
        with caplog.at_level(logging.WARNING, logger="cloud_hub.db.leases"):
            with a_engine.begin() as connection:
                renewal = fence(connection, name="job", holder="hub-a", ttl_s=30.0)
            assert renewal.late_s is None, "a lease within its ttl is not late"
            assert _expires_at(a_engine, "job") == pytest.approx(renewal.until)
            a.confirm()
            assert a.late_renewals == 0 and not _warnings(caplog), "no warning within the ttl"

            _set_expiry(a_engine, "job", time.time() - 12.0)  # its ttl passed, nobody took it
            before = time.time()
            until = a.confirm()
            assert a.late_renewals == 1 and a.held
            assert _expires_at(a_engine, "job") == pytest.approx(until)
            assert until >= before + 30.0, "renewed for a whole ttl"
            [warning] = _warnings(caplog)
            assert warning.getMessage().startswith("job: renewed its lease 12.")
            assert "after it had expired (a 30-s lease)" in warning.getMessage()

            _set_expiry(a_engine, "job", time.time() - 1.0)
            assert b.keep() and b.taken_over, "an expired lease is taken over"
            with pytest.raises(LeaseLost, match="no longer held by hub-a"):
                a.confirm()
            assert not a.held and a.late_renewals == 1, "a refusal is not a late renewal"
            assert len(_warnings(caplog)) == 1
