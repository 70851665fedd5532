"""Rollups and retention: raw telemetry folded into 1-minute and 1-hour buckets exactly once,
read back through the API at the resolution asked for; raw rows deleted only once folded and
old enough (in bounded rounds), without showing up as missing; old rollups, dead letters and
finished jobs pruned."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlmodel import Session, func, select

from cloud_hub.db.engine import make_engine
from cloud_hub.db.ingest_store import DeadLetterRecord, IngestBatch, store_batch
from cloud_hub.db.queries import telemetry_summary
from cloud_hub.db.rollup_tables import TelemetryRollup
from cloud_hub.db.tables import DeadLetter, Device, TelemetryBatchRow
from cloud_hub.maintenance.job import MaintenanceTick
from cloud_hub.maintenance.retention import RetentionPolicy
from cloud_hub.maintenance.rollup_reads import read_rollups
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch
from tests.cloud_hub.api_support import api_client
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.pg import pg_database

pytestmark = pytest.mark.hub
__all__ = ["pg_database"]
EPOCH = "0123456789abcdef"
DAY = 86_400.0
T0 = 1_700_000_000.0 - (T0_MOD := 1_700_000_000.0 % 3600)  # on an hour


def _batch(seq: int, t0: float, rows: int = 30, device: str = "pump-1") -> TelemetryBatch:
    ts = [t0 + 10.0 * i for i in range(rows)]  # one reading every 10 s
    return TelemetryBatch(device_id=device, epoch=EPOCH, seq=seq, channels=["a", "b"], ts=ts,
                          values=[[float(i), -float(i)] for i in range(rows)])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def test_rollups_fold_each_row_once_and_retention_keeps_what_is_not_folded(
    db_url: str,
) -> None:
    engine = make_engine(db_url)
    stored_at = T0 + 10 * DAY
    with Session(engine) as session:  # 40 batches of 30 readings: 12,000 s, 3 h 20 min
        store_batch(session, IngestBatch(
            telemetry=[_batch(s, T0 + 300.0 * s) for s in range(40)],
            dead_letters=[DeadLetterRecord("t", "bad", b"x", received_at=stored_at)]),
            now=stored_at)
    tick = MaintenanceTick(engine, RetentionPolicy(raw_days=30, batch=7), fold_limit=15,
                           settle_s=30)
    while tick(stored_at + 60):  # folds 15 rows a round until all 40 are in
        pass
    assert tick.folded == 40
    tick(stored_at + 120)  # nothing new: nothing folded twice
    assert tick.folded == 40
    with engine.connect() as conn:
        hourly = read_rollups(conn, device_ids=["pump-1"], resolution="1h", since=T0,
                              until=T0 + 4 * 3600)["pump-1"]
        minutes = read_rollups(conn, device_ids=["pump-1"], resolution="1m", since=None,
                               until=None)["pump-1"]
    assert hourly["channels"] == ["a", "b"]
    assert hourly["ts"].tolist() == [T0 + h * 3600 for h in range(4)]
    assert hourly["count"][:, 0].tolist() == [360, 360, 360, 120]
    assert int(minutes["count"][:, 0].sum()) == 1200
    # batch s covers 300 s from T0 + 300 s: channel a goes 0..29 within every batch
    assert hourly["min"][0].tolist() == [0.0, -29.0] and hourly["max"][0].tolist() == [29.0, 0.0]
    assert hourly["mean"][0][0] == pytest.approx(14.5)

    # 31 days later: raw rows go (7 per round), rollups stay; the summary misses nothing.
    later = stored_at + 31 * DAY
    with Session(engine) as session:  # one newer batch, stored now: not folded yet
        store_batch(session, IngestBatch(telemetry=[_batch(40, T0 + 12_000.0)]), now=later)
    rounds = 0
    while tick(later) and rounds < 20:
        rounds += 1
    with Session(engine) as session:
        left = session.exec(select(TelemetryBatchRow.seq)).all()
        assert left == [40], "only the batch stored within the retention period is kept"
        assert session.exec(select(func.count()).select_from(TelemetryRollup)).one() > 0
        assert session.exec(select(func.count()).select_from(DeadLetter)).one() == 0
        [summary] = telemetry_summary(session).rows
        assert summary["missing_batches"] == 0 and summary["batches"] == 1
        readings = session.exec(select(Device.telemetry_readings)).one()
    # A batch sent again after retention deleted it, with its key: under its stream's
    # watermark, so a duplicate, not stored and counted a second time.
    with Session(engine) as session:
        again = store_batch(session, IngestBatch(telemetry=[_batch(3, T0 + 900.0)]),
                            now=later + 60)
    assert (again.telemetry_batches, again.duplicates) == (0, 1)
    with Session(engine) as session:
        assert session.exec(select(TelemetryBatchRow.seq)).all() == [40]
        assert session.exec(select(Device.telemetry_readings)).one() == readings
    engine.dispose()


@pytest.mark.integration
def test_the_api_answers_at_the_resolution_asked_for(hub: Hub) -> None:
    with Session(hub.engine) as session:
        store_batch(session, IngestBatch(telemetry=[_batch(s, T0 + 300.0 * s)
                                                    for s in range(12)]), now=T0)
    hub.maintenance_tick(T0 + 3600)
    with api_client(hub) as api:
        api.headers["X-API-Key"] = ADMIN_KEY
        _check_resolutions(api)


def _check_resolutions(api: httpx.Client) -> None:
    raw = api.get("/api/v1/devices/pump-1/telemetry",
                  params={"from": T0, "to": T0 + 599, "resolution": "raw"})
    assert raw.status_code == 200 and len(raw.json()["ts"]) == 60
    hourly = api.get("/api/v1/devices/pump-1/telemetry", params={"resolution": "1h"}).json()
    assert hourly["resolution"] == "1h" and hourly["ts"] == [T0]
    assert hourly["count"] == [[360, 360]]
    minutes = api.get("/api/v1/devices/pump-1/telemetry",
                      params={"from": T0, "to": T0 + 600, "resolution": "1m"}).json()
    assert minutes["ts"] == [T0 + 60.0 * m for m in range(10)]
    assert np.allclose([r[0] for r in minutes["mean"]], [2.5 + 6 * m for m in range(5)] * 2)
    bad = api.get("/api/v1/devices/pump-1/telemetry", params={"resolution": "5m"})
    assert bad.status_code == 422


def test_a_fold_read_before_another_folder_moved_the_mark_writes_nothing(db_url: str) -> None:
    """The job reads and folds outside the write transaction; if another hub process folded
    the same rows meanwhile, the late write is refused by the mark, so no row counts twice."""
    from cloud_hub.maintenance.rollups import apply_pending, read_pending

    engine = make_engine(db_url)
    stored_at = T0 + 10 * DAY
    with Session(engine) as session:
        store_batch(session, IngestBatch(telemetry=[_batch(s, T0 + 300.0 * s, device=d)
                                                    for s in range(6) for d in ("p-1", "p-2")]),
                    now=stored_at)
    now = stored_at + 60
    with engine.connect() as conn:
        first = read_pending(conn, now=now)
        second = read_pending(conn, now=now)
    assert first is not None and second is not None and first.rows == second.rows == 12
    with engine.begin() as conn:
        assert apply_pending(conn, first, now=now) == 12
    with engine.begin() as conn:
        assert apply_pending(conn, second, now=now) == 0
    with engine.connect() as conn:
        assert read_pending(conn, now=now) is None
        got = read_rollups(conn, device_ids=["p-1", "p-2"], resolution="1h", since=None,
                           until=None)
    for device in ("p-1", "p-2"):  # 6 batches x 30 readings each, folded once
        assert int(got[device]["count"][:, 0].sum()) == 180
    engine.dispose()


def test_a_device_whose_channels_changed_reads_back_on_one_time_axis(db_url: str) -> None:
    """Buckets folded under two channel lists (a channel added later) come back as one table:
    the new channel is NaN (count 0) where it had no reading."""
    engine = make_engine(db_url)
    stored_at = T0 + 10 * DAY
    later = TelemetryBatch(device_id="pump-1", epoch=EPOCH, seq=1, channels=["a", "b", "c"],
                           ts=[T0 + 3600.0 + 10.0 * i for i in range(30)],
                           values=[[1.0, 2.0, 3.0]] * 30)
    with Session(engine) as session:
        store_batch(session, IngestBatch(telemetry=[_batch(0, T0), later]), now=stored_at)
    tick = MaintenanceTick(engine, RetentionPolicy(), settle_s=30)
    tick(stored_at + 60)
    with engine.connect() as conn:
        got = read_rollups(conn, device_ids=["pump-1", "pump-2"], resolution="1h", since=None,
                           until=None)
    assert set(got) == {"pump-1"}
    hourly = got["pump-1"]
    assert hourly["channels"] == ["a", "b", "c"]
    assert hourly["ts"].tolist() == [T0, T0 + 3600]
    assert hourly["count"].tolist() == [[30, 30, 0], [30, 30, 30]]
    assert np.isnan(hourly["mean"][0, 2]) and hourly["mean"][1].tolist() == [1.0, 2.0, 3.0]
    assert hourly["max"][0, :2].tolist() == [29.0, 0.0]
    engine.dispose()
