"""The fleet's counts (the console's fleet page and live updates, and ``edgeloop_fleet_*`` in
the Prometheus metrics) on SQLite and on PostgreSQL, which refuses a GROUP BY whose
expression differs from the selected one by a bound parameter (the console's fleet page
failed on PostgreSQL that way until these tests)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db.ops_tables import Incident
from cloud_hub.db.tables import Device
from cloud_hub.metrics.fleet import FleetFigures, fleet_figures
from cloud_hub.ui.live import _global_tokens  # uncached (live_token caches for 0.5 s)
from cloud_hub.ui.queries import FleetFilter, fleet_page
from tests.pg import hub_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with hub_engine(request.param, tmp_path) as e:
        yield e


def _fleet(engine: Engine, now: float) -> None:
    """3 online, 1 silent (online, nothing for 10 minutes), 2 offline; one open incident."""
    rows = [("on-1", True, now, 5, 30.0), ("on-2", True, now - 5, 7, 90.0),
            ("on-3", True, now, 0, 0.0), ("quiet", True, now - 600, 40, 4000.0),
            ("off-1", False, now - 60, 100, 9000.0), ("off-2", False, now - 3600, None, None)]
    with Session(engine) as session:
        for device_id, online, seen, depth, age in rows:
            beat = None if depth is None else {"at": seen, "outbox_depth": depth,
                                               "oldest_unsent_age_s": age}
            session.add(Device(device_id=device_id, online=online, last_seen=seen,
                               heartbeat=beat))
        session.add(Incident(device_id="on-2", started_at=now - 30, ended_at=now - 20,
                             opened_at=now - 20, last_event_at=now - 20, updated_at=now - 20,
                             peak_score=3.0, peak_threshold=1.0, model_name="m",
                             model_version=1))
        session.commit()


def test_the_fleet_figures_count_presence_and_what_devices_hold(engine: Engine) -> None:
    now = time.time()
    _fleet(engine, now)
    with Session(engine) as session:
        figures = fleet_figures(session, now)
    assert figures == {"devices": {"online": 3, "silent": 1, "offline": 2}, "out_of_sync": 0,
                       "with_open_incidents": 1, "outbox_messages": 152.0,
                       "oldest_unsent_s": 90.0}  # online devices only: not quiet's 4,000 s


def test_the_consoles_fleet_page_and_live_updates_read_the_same_counts(engine: Engine) -> None:
    now = time.time()
    _fleet(engine, now)
    with Session(engine) as session:
        page = fleet_page(session, FleetFilter(state="online"), page=1, per_page=50)
        assert sorted(d.device_id for d in page.devices) == ["on-1", "on-2", "on-3"]
        assert (page.counts["online"], page.counts["silent"], page.counts["offline"],
                page.counts["total"], page.counts["incident"]) == (3, 1, 2, 6, 1)
        before = _global_tokens(session)["fleet"]
    with Session(engine) as session:  # a device goes offline: the fleet's live token changes
        device = session.get(Device, "on-3")
        assert device is not None
        device.online = False
        session.add(device)
        session.commit()
        assert _global_tokens(session)["fleet"] != before


def test_a_scrape_reads_the_fleet_at_most_every_few_seconds_and_survives_a_failing_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    with hub_engine("sqlite", tmp_path) as engine:
        now = time.time()
        _fleet(engine, now)
        cached = FleetFigures(engine, max_age_s=3600.0)
        first = cached.get()
        assert first is not None and first["devices"]["online"] == 3
        with Session(engine) as session:
            session.add(Device(device_id="late", online=True, last_seen=time.time()))
            session.commit()
        assert cached.get() == first  # within max_age_s: the same read
        fresh = FleetFigures(engine, max_age_s=0.0)
        got = fresh.get()
        assert got is not None and got["devices"]["online"] == 4
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE incidents")
        assert fresh.get() is None  # the scrape goes on without the fleet
        assert "fleet's figures are left out" in caplog.text
