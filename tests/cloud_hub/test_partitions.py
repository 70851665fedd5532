"""Telemetry in day partitions on PostgreSQL (issue 15): each batch in the partition of its
first reading's day, stored once whatever the partitions; partitions made ahead of the data
(taking their rows from the default partition when made late); dropped whole by retention
once every row in them is old enough and folded, with their keys and without the dropped seqs
counting as missing; an existing table turned into partitions by the migration, rows kept.

Real PostgreSQL (127.0.0.1:5432), a database per test; skipped when the server is not there."""

from __future__ import annotations

import datetime as dt
import struct
import time
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db import partitions
from cloud_hub.db.engine import make_engine
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.migrate import alembic_config, upgrade
from cloud_hub.db.queries import telemetry_summary
from cloud_hub.db.telemetry_read import read_telemetry
from cloud_hub.maintenance.job import MaintenanceTick
from cloud_hub.maintenance.retention import RetentionPolicy
from cloud_hub.maintenance.rollup_reads import read_rollups
from shared.messages import TelemetryBatch
from shared.packed import PackedTelemetry, decode_telemetry, encode_telemetry
from tests.pg import made_pg_database

pytestmark = pytest.mark.hub
EPOCH = "0123456789abcdef"
DAY = 86_400.0
D0 = dt.datetime(2026, 1, 10, tzinfo=dt.UTC).timestamp()  # a day far from today's partitions


def _batch(seq: int, t0: float, *, rows: int = 10, floor: int = 0) -> TelemetryBatch:
    return TelemetryBatch(device_id="pump-1", epoch=EPOCH, seq=seq, floor=floor,
                          channels=["a", "b"], ts=[t0 + i for i in range(rows)],
                          values=[[float(i), float(seq)] for i in range(rows)])


def _store(engine: Engine, *batches: TelemetryBatch | PackedTelemetry, now: float) -> tuple[
        int, int]:
    with Session(engine) as session:
        result = store_batch(session, IngestBatch(telemetry=list(batches)), now=now)
    return result.telemetry_batches, result.duplicates


def _where(engine: Engine) -> dict[int, str]:
    """seq -> the partition its row is in."""
    with engine.connect() as conn:
        return {int(s): str(p) for s, p in conn.execute(text(
            "SELECT seq, tableoid::regclass::text FROM telemetry"))}


def _names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {p.name for p in partitions.list_partitions(conn)}


def _scalar(engine: Engine, sql: str) -> object:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


@pytest.fixture
def engine() -> Iterator[Engine]:
    with made_pg_database("edgeloop_part_") as url:
        made = make_engine(url)
        try:
            yield made
        finally:
            made.dispose()


def test_a_new_database_has_the_coming_days_and_each_batch_lands_in_its_day(
        engine: Engine) -> None:
    today = dt.datetime.now(dt.UTC).date()
    days = {f"telemetry_d{today + dt.timedelta(days=n):%Y%m%d}" for n in range(-1, 3)}
    assert days | {"telemetry_default"} <= _names(engine), "made when the schema was"
    assert partitions.ensure_days(engine, now=time.time()) == [], "nothing more to make"

    made = partitions.ensure_days(engine, now=D0 + DAY / 2)
    assert made == ["telemetry_d20260109", "telemetry_d20260110", "telemetry_d20260111",
                    "telemetry_d20260112"]
    assert _store(engine, _batch(0, D0 + 3600), _batch(1, D0 + DAY + 60),
                  _batch(2, 631_152_000.0), now=D0 + DAY) == (3, 0)
    assert _where(engine) == {0: "telemetry_d20260110", 1: "telemetry_d20260111",
                              2: "telemetry_default"}, "1990 has no day partition"

    # Sent again (a new floor, the other encoding, a batch of its own): stored once.
    packed = decode_telemetry(encode_telemetry(_batch(1, D0 + DAY + 60, floor=1), "msgpack"))
    assert isinstance(packed, PackedTelemetry)
    assert _store(engine, _batch(0, D0 + 3600), packed, _batch(2, 631_152_000.0, floor=2),
                  now=D0 + 2 * DAY) == (0, 3)
    assert _scalar(engine, "SELECT count(*) FROM telemetry") == 3
    assert _scalar(engine, "SELECT count(*) FROM telemetry_keys") == 3
    with Session(engine) as session:
        piece = read_telemetry(session, device_id="pump-1", since=D0, until=D0 + 2 * DAY)
    assert piece.batches == 2 and piece.values[:, 1].tolist() == [0.0] * 10 + [1.0] * 10


def test_a_day_made_late_takes_its_rows_from_the_default_partition(engine: Engine) -> None:
    assert _store(engine, _batch(0, D0 + 60), _batch(1, D0 + 2 * DAY), now=D0) == (2, 0)
    assert set(_where(engine).values()) == {"telemetry_default"}
    partitions.ensure_days(engine, now=D0)  # D0 - 1 .. D0 + 2
    assert _where(engine) == {0: "telemetry_d20260110", 1: "telemetry_d20260112"}
    assert _scalar(engine, "SELECT count(*) FROM telemetry_default") == 0
    assert _store(engine, _batch(0, D0 + 60), now=D0) == (0, 1), "still stored once"


def test_retention_drops_a_day_whole_once_every_row_is_old_and_folded(engine: Engine) -> None:
    partitions.ensure_days(engine, now=D0)
    policy = RetentionPolicy(raw_days=30, batch=7)
    tick = MaintenanceTick(engine, policy, fold_limit=100, settle_s=30)
    # 40 batches across D0, and one on the next day, stored as they were made
    for seq in range(40):
        _store(engine, _batch(seq, D0 + 600.0 * seq), now=D0 + 600.0 * seq + 5)
    _store(engine, _batch(40, D0 + DAY + 60), now=D0 + DAY + 65)
    day0, day1 = "telemetry_d20260110", "telemetry_d20260111"

    # Old enough, but not folded: only the empty days go (the mark is before every row).
    assert partitions.drop_expired(engine, now=D0 + 40 * DAY, keep_s=30 * DAY,
                                   folded_at=0.0) == ["telemetry_d20260109", "telemetry_d20260112"]
    while tick(D0 + DAY + 3600):  # fold everything
        pass
    assert tick.folded == 41
    # A late batch of D0 (an agent back after four weeks), folded too.
    late = D0 + 28 * DAY
    _store(engine, _batch(41, D0 + 600.0 * 41), now=late)
    while tick(late + 60):
        pass
    assert tick.folded == 42

    # 32 days on: D0 ended 31 days ago, but its late batch was stored 4 days ago: it stays,
    # whole (no row of a day partition is deleted one by one); D0 + 1 goes.
    tick(D0 + 32 * DAY)
    names = _names(engine)
    assert day0 in names and day1 not in names
    assert _scalar(engine, f"SELECT count(*) FROM {day0}") == 41
    assert "telemetry_partitions" in tick.pruned

    # Once the late batch is 30 days old too, the day goes, its keys with it.
    _store(engine, _batch(42, late + 31 * DAY), now=late + 31 * DAY)
    while tick(late + 31 * DAY + 60):
        pass
    assert day0 not in _names(engine)
    last_day = dt.datetime.fromtimestamp(late + 31 * DAY, dt.UTC)
    assert _where(engine) == {42: f"telemetry_d{last_day:%Y%m%d}"}
    assert _scalar(engine, "SELECT count(*) FROM telemetry_keys") == 1
    assert _scalar(engine, "SELECT pruned_through FROM stream_marks "
                           "WHERE stream = 'telemetry'") == 41
    with Session(engine) as session:
        [summary] = telemetry_summary(session).rows
    assert (summary["batches"], summary["missing_batches"]) == (1, 0), \
        "dropped seqs are not missing"
    with engine.connect() as conn:  # the rollups still answer for the days dropped
        hourly = read_rollups(conn, device_ids=["pump-1"], resolution="1h", since=D0,
                              until=D0 + DAY)["pump-1"]
    assert int(hourly["count"][:, 0].sum()) == 41 * 10  # seqs 0-39 and 41

    # An agent that never got the acknowledgement of seq 7 sends it again after its day was
    # dropped (its key with it): under the watermark, it is a duplicate, not a new row.
    counted = "SELECT telemetry_readings FROM devices WHERE device_id = 'pump-1'"
    readings = _scalar(engine, counted)
    assert _store(engine, _batch(7, D0 + 600.0 * 7), now=late + 32 * DAY) == (0, 1)
    assert _where(engine) == {42: f"telemetry_d{last_day:%Y%m%d}"}
    assert _scalar(engine, counted) == readings


def test_the_migration_turns_an_existing_table_into_partitions_keeping_its_rows() -> None:
    """A database at revision 0010 with rows (one from a clock a week ahead) upgraded: the old
    table becomes the legacy partition below tomorrow, the row ahead moves to the default
    partition, every key is filled in, and ingest goes on from there."""
    now = time.time()
    with made_pg_database("edgeloop_part_mig_") as url:
        plain = create_engine(url)
        try:
            with plain.begin() as conn:
                command.upgrade(alembic_config(conn), "0010")
                for seq, ts in ((0, now - 3 * DAY), (1, now - 60), (2, now + 7 * DAY)):
                    conn.execute(text(
                        "INSERT INTO telemetry (device_id, epoch, seq, channels, readings, "
                        "ts_first, ts_last, ts_blob, values_blob, stored_at) VALUES "
                        "('pump-1', :e, :s, '[\"a\"]', 1, :t, :t, :b, :v, :t)"),
                        {"e": EPOCH, "s": seq, "t": ts, "b": _doubles(ts), "v": _doubles(seq)})
            upgrade(plain)
        finally:
            plain.dispose()
        engine = make_engine(url)
        try:
            assert _where(engine) == {0: "telemetry_legacy", 1: "telemetry_legacy",
                                      2: "telemetry_default"}
            assert _scalar(engine, "SELECT count(*) FROM telemetry_keys") == 3
            tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
            assert f"telemetry_d{tomorrow:%Y%m%d}" in _names(engine)
            resend = TelemetryBatch(device_id="pump-1", epoch=EPOCH, seq=1, channels=["a"],
                                    ts=[now - 60], values=[[1.0]])
            assert _store(engine, resend, now=now) == (0, 1)
            assert _store(engine, _batch(3, now + DAY), now=now) == (1, 0)
            assert _where(engine)[3] == f"telemetry_d{tomorrow:%Y%m%d}"
            with Session(engine) as session:
                piece = read_telemetry(session, device_id="pump-1", channels=["a"])
            assert piece.values[:, 0].tolist()[:3] == [0.0, 1.0, 0.0]
        finally:
            engine.dispose()


def _doubles(value: float) -> bytes:
    return struct.pack("<d", float(value))
