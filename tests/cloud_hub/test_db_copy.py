"""``cloud-hub db copy``: a hub's SQLite database copied into PostgreSQL row for row, and the hub
going on from the copy as if nothing moved (real SQLite, real PostgreSQL, the hub's own store)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Table, select, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.cli import main
from cloud_hub.core.security import Scope, generate_api_key, hash_api_key
from cloud_hub.db import partitions
from cloud_hub.db.copy import CopyError, CopyRefused, copied_tables, copy_database
from cloud_hub.db.engine import make_engine
from cloud_hub.db.ingest_store import DeadLetterRecord, IngestBatch, store_batch
from cloud_hub.db.ops_tables import HubProcessRecord, JobLease
from cloud_hub.db.queries import read_telemetry
from cloud_hub.db.registry_tables import TrainingJob
from cloud_hub.db.tables import ApiKey, DeadLetter, Device
from cloud_hub.jobs.request import TrainingRequest, UploadedSet
from cloud_hub.jobs.upload_store import new_upload
from cloud_hub.maintenance.rollup_reads import read_rollups
from cloud_hub.maintenance.rollups import fold_rollups
from cloud_hub.registry.records import register_artifact
from shared.messages import AnomalyEvent, ModelRef, TelemetryBatch
from tests.cloud_hub.helpers import variant_artifact
from tests.pg import made_pg_database

pytestmark = [pytest.mark.hub]

NOW = time.time()
DAY = partitions.DAY
EPOCH = "0123456789abcdef"
DEVICES = ("pump-1", "pump-2", "fan-1")
# What the fill below writes rows into; the copy of every other table is checked all the same.
FILLED = {"devices", "telemetry", "telemetry_keys", "stream_marks", "anomalies", "dead_letters",
          "telemetry_rollups", "maintenance_marks", "models", "model_variants", "api_keys",
          "training_jobs", "training_uploads"}


def _batch(device: str, seq: int, start: float) -> TelemetryBatch:
    return TelemetryBatch(device_id=device, epoch=EPOCH, seq=seq, channels=["a", "b"],
                          ts=[start + k for k in range(10)],
                          values=[[float(seq), float(k)] for k in range(10)])


def _fill(engine: Engine) -> None:
    """Three days of a small fleet through the hub's own store, folded into rollups, plus a
    model with its variants, an API key, and a training job with its uploaded CSV."""
    seqs = range(0, 72)  # one batch an hour per device, from three days ago
    for device in DEVICES:
        batches = [_batch(device, s, NOW - 3 * DAY + s * 3600.0) for s in seqs]
        anomaly = AnomalyEvent(device_id=device, epoch=EPOCH, seq=0, ts=(NOW - 60, NOW - 50),
                               score=2.0, threshold=1.0, model=ModelRef(name="m", version=1),
                               channels=["a"], detected_at=NOW - 50)
        with Session(engine) as session:
            store_batch(session, IngestBatch(
                telemetry=batches, anomalies=[anomaly],
                dead_letters=[DeadLetterRecord(topic=f"edgeloop/v1/{device}/telemetry",
                                               reason="schema: seq: expected int",
                                               payload=b'{"seq": "x"}', received_at=NOW - 120)]),
                now=NOW - 120)
    with engine.begin() as conn:
        while fold_rollups(conn, now=NOW, settle_s=0.0):
            pass
    with Session(engine) as session:
        register_artifact(session, variant_artifact(), name="pump-ae", chunk_size=4096)
        session.add(ApiKey(name="ops", key_hash=hash_api_key(generate_api_key()), prefix="el_ops",
                           scope=Scope.ADMIN, created_at=NOW))
        upload = new_upload(np.linspace(0, 1, 64, dtype=np.float32).reshape(32, 2))
        job = TrainingJob(name="csv-ae", created_at=NOW, request=TrainingRequest(
            name="csv-ae", upload=UploadedSet(file=upload.name, rows=32, channels=["a", "b"])))
        session.add(job)
        session.flush()
        upload.job_id = job.id
        session.add(upload)
        session.add(HubProcessRecord(holder="old-host:12:abcd", client_id="hub-a",
                                     host="old-host", pid=12, version="0.1.0",
                                     started_at=NOW - 3600, seen_at=NOW - 5, stopped_at=NOW - 5,
                                     report_s=10.0, figures={"telemetry_readings": 2160.0}))
        session.commit()


def _rows(engine: Engine, table: Table) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(table).order_by(*table.primary_key.columns))]


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    _fill(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_target() -> Iterator[Engine]:
    with made_pg_database() as url:
        engine = make_engine(url, create=False)
        yield engine
        engine.dispose()


@pytest.mark.postgres
def test_a_sqlite_hub_database_lands_in_postgresql_row_for_row_and_the_hub_goes_on_from_it(
        source: Engine, pg_target: Engine, tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    result = copy_database(source, pg_target, keep_raw_days=30.0, now=NOW,
                           on_progress=lambda table, done, total: seen.__setitem__(table, done),
                           batch_rows=50)

    assert {name for name, n in result.rows.items() if n} == FILLED
    for table in copied_tables():
        assert _rows(pg_target, table) == _rows(source, table), table.name
        assert seen[table.name] == result.rows[table.name]
    assert result.rows["telemetry"] == 3 * 72
    # The source's processes are not the target's.
    processes: Table = HubProcessRecord.__table__  # type: ignore[attr-defined]
    assert len(_rows(source, processes)) == 1 and _rows(pg_target, processes) == []

    # Each UTC day of the raw telemetry got its partition: none of it sits in the default one.
    with pg_target.connect() as conn:
        days = {p.day for p in partitions.list_partitions(conn) if p.day is not None}
        in_default = conn.execute(text("SELECT count(*) FROM telemetry_default")).scalar()
    first, last = (time.gmtime(NOW - 3 * DAY + s * 3600.0) for s in (0, 71))
    assert {d.timetuple()[:3] for d in days} >= {first[:3], last[:3]}
    assert in_default == 0

    # A batch sent again after the move is recognised; a new one is stored; counters go on.
    with Session(pg_target) as session:
        again = store_batch(session, IngestBatch(telemetry=[_batch("pump-1", 71, NOW - 3600)]),
                            now=NOW)
    with Session(pg_target) as session:
        new = store_batch(session, IngestBatch(telemetry=[_batch("pump-1", 72, NOW - 60)]),
                          now=NOW)
        device = session.get(Device, "pump-1")
        piece = read_telemetry(session, device_id="pump-1")
    assert (again.duplicates, again.telemetry_readings) == (1, 0)
    assert (new.duplicates, new.telemetry_readings) == (0, 10)
    assert device is not None and device.telemetry_batches == 73
    assert len(piece.ts) == 730

    # The rollups read back the same on both sides.
    with source.connect() as a, pg_target.connect() as b:
        hours = [read_rollups(conn, device_ids=list(DEVICES), resolution="1h",
                              since=NOW - 4 * DAY, until=NOW) for conn in (a, b)]
    assert sorted(hours[0]) == sorted(hours[1]) == sorted(DEVICES)
    for device_id in DEVICES:
        assert hours[0][device_id]["ts"].tolist() == hours[1][device_id]["ts"].tolist()
        assert hours[0][device_id]["mean"].tolist() == hours[1][device_id]["mean"].tolist()

    # Ids go on past the copied ones (PostgreSQL's sequences were moved).
    with Session(pg_target) as session:
        key = ApiKey(name="next", key_hash=hash_api_key(generate_api_key()), prefix="el_nx",
                     created_at=NOW)
        letter = DeadLetter(topic="t", reason="r", payload_preview="", payload_size=0,
                            received_at=NOW)
        session.add_all([key, letter])
        session.commit()
        assert (key.id, letter.id) == (2, 4)

    # And back again, from PostgreSQL into SQLite: the same rows.
    back = make_engine(f"sqlite:///{tmp_path / 'back.db'}", create=False)
    copy_database(pg_target, back, keep_raw_days=30.0, now=NOW)
    for table in copied_tables():
        assert _rows(back, table) == _rows(pg_target, table), table.name
    back.dispose()


@pytest.mark.postgres
def test_a_row_postgresql_cannot_hold_leaves_the_target_empty_and_is_named(
        source: Engine, pg_target: Engine) -> None:
    too_long = "d" * 70  # SQLite does not enforce VARCHAR(64); PostgreSQL does
    with Session(source) as session:
        store_batch(session, IngestBatch(telemetry=[_batch(too_long, 0, NOW)]), now=NOW)

    with pytest.raises(CopyError) as caught:
        copy_database(source, pg_target, keep_raw_days=30.0, now=NOW)

    assert "nothing was copied: table devices" in str(caught.value)
    assert too_long in str(caught.value)
    assert "character varying(64)" in str(caught.value)
    for table in copied_tables():
        assert _rows(pg_target, table) == [], table.name


def test_the_copy_is_refused_before_writing_when_it_could_not_be_whole(
        source: Engine, tmp_path: Path) -> None:
    target = make_engine(f"sqlite:///{tmp_path / 'target.db'}")
    with Session(target) as session:
        session.add(Device(device_id="already-here"))
        session.commit()
    with pytest.raises(CopyRefused, match=r"not empty: devices \(1 rows\)"):
        copy_database(source, target, keep_raw_days=30.0, now=NOW)

    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with Session(source) as session:
        session.add(JobLease(name="maintenance", holder="hub-a", expires_at=NOW + 25))
        session.commit()
    with pytest.raises(CopyRefused, match=r"hub-a holds the lease 'maintenance' for 25 s"):
        copy_database(source, empty, keep_raw_days=30.0, now=NOW)

    with source.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0011'"))
    with pytest.raises(CopyRefused, match=r"schema revision 0011, and this hub's is \d+"):
        copy_database(source, empty, keep_raw_days=30.0, now=NOW + 60)

    blank = make_engine(f"sqlite:///{tmp_path / 'blank.db'}", create=False)
    with pytest.raises(CopyRefused, match="holds no hub tables"):
        copy_database(blank, empty, keep_raw_days=30.0, now=NOW)
    for table in copied_tables():
        assert _rows(empty, table) == [], table.name
    for engine in (target, empty, blank):
        engine.dispose()


def test_cloud_hub_db_copy_moves_the_data_and_says_what_was_wrong(
        source: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    source_file = Path(str(source.url.database))
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDGELOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'moved.db'}")

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("db", "copy")[::2] == (2, "error: db copy needs --from URL (the database to copy "
                                         "from: a SQLAlchemy URL, or the path of a SQLite file)\n")
    code, _, err = run("db", "copy", "--from", str(tmp_path / "nowhere.db"))
    assert (code, "no such SQLite file" in err) == (2, True)
    code, _, err = run("db", "copy", "--from", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert code == 1 and err.startswith("error: db copy: ") and "127.0.0.1" in err

    code, out, err = run("--json", "db", "copy", "--from", str(source_file))
    assert code == 0, err
    rows = {r["table"]: r["rows"] for r in json.loads(out)}
    assert rows["telemetry"] == 3 * 72 and rows["models"] == 1
    assert "copied " in err and " rows/s)" in err
    moved = make_engine(f"sqlite:///{tmp_path / 'moved.db'}", create=False)
    with moved.connect() as conn:
        assert conn.execute(text("SELECT name FROM models")).scalars().all() == ["pump-ae"]
    moved.dispose()

    code, _, err = run("db", "copy", "--from", str(source_file))
    assert code == 1 and "the target database is not empty: " in err
    assert "devices (3 rows)" in err and "telemetry (216 rows)" in err
    monkeypatch.setenv("EDGELOOP_DATABASE_URL", f"sqlite:///{source_file}")
    code, _, err = run("db", "copy", "--from", str(source_file))
    assert code == 2 and "names the hub's own database" in err
