"""Schema migrations: a database at 98792cc's schema, with data in it, upgraded by the hub;
the migrations build exactly the schema the tables declare; a newer database is refused.

The old schema is written out here as the SQL that ``create_all`` made at 98792cc (SQLite's
text; PostgreSQL takes the same with BYTEA for BLOB), never by checking old code out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from cloud_hub.cli import main
from cloud_hub.core.security import hash_api_key
from cloud_hub.db.engine import make_engine
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.migrate import SchemaTooNew, head, state, upgrade
from cloud_hub.db.partitions import include_name
from cloud_hub.db.tables import ApiKey, Device, TelemetryBatchRow
from cloud_hub.db.telemetry_read import read_telemetry
from shared.messages import EPOCH_PATTERN, TelemetryBatch
from simulator.hub_process import HubProcess
from simulator.ports import free_port
from tests.pg import made_pg_database

pytestmark = pytest.mark.hub

SCHEMA_98792CC = """
CREATE TABLE models (
    id INTEGER NOT NULL, 
    name VARCHAR(64) NOT NULL, 
    version INTEGER NOT NULL, 
    status VARCHAR NOT NULL, 
    created_at FLOAT NOT NULL, 
    published_at FLOAT, 
    retired_at FLOAT, 
    family VARCHAR NOT NULL, 
    spec JSON NOT NULL, 
    channels JSON NOT NULL, 
    training JSON NOT NULL, 
    normalization JSON NOT NULL, 
    input JSON NOT NULL, 
    score JSON NOT NULL, 
    threshold FLOAT NOT NULL, 
    threshold_method VARCHAR NOT NULL, 
    quantization VARCHAR NOT NULL, 
    size_bytes INTEGER NOT NULL, 
    float_size_bytes INTEGER NOT NULL, 
    sha256 VARCHAR NOT NULL, 
    parity JSON NOT NULL, 
    parity_passed BOOLEAN NOT NULL, 
    parity_failure VARCHAR, 
    validation JSON NOT NULL, 
    extra JSON NOT NULL, 
    key_id VARCHAR NOT NULL, 
    manifest JSON NOT NULL, 
    tflite BLOB NOT NULL, 
    training_job_id INTEGER, 
    PRIMARY KEY (id), 
    CONSTRAINT uq_models_name_version UNIQUE (name, version)
);
CREATE INDEX ix_models_name ON models (name);
CREATE TABLE training_jobs (
    id INTEGER NOT NULL, 
    name VARCHAR(64) NOT NULL, 
    status VARCHAR NOT NULL, 
    request JSON NOT NULL, 
    progress JSON NOT NULL, 
    error VARCHAR, 
    model_name VARCHAR, 
    model_version INTEGER, 
    created_at FLOAT NOT NULL, 
    started_at FLOAT, 
    finished_at FLOAT, 
    PRIMARY KEY (id)
);
CREATE TABLE rollouts (
    id INTEGER NOT NULL, 
    model_name VARCHAR NOT NULL, 
    model_version INTEGER NOT NULL, 
    status VARCHAR NOT NULL, 
    target JSON NOT NULL, 
    policy JSON NOT NULL, 
    stage INTEGER NOT NULL, 
    stages JSON NOT NULL, 
    stage_started_at FLOAT, 
    reason VARCHAR, 
    created_at FLOAT NOT NULL, 
    finished_at FLOAT, 
    seconds_to_full FLOAT, 
    PRIMARY KEY (id)
);
CREATE TABLE devices (
    device_id VARCHAR(64) NOT NULL, 
    online BOOLEAN NOT NULL, 
    status_at FLOAT, 
    last_seen FLOAT, 
    agent_version VARCHAR NOT NULL, 
    "group" VARCHAR(64), 
    tags JSON NOT NULL, 
    desired_name VARCHAR, 
    desired_version INTEGER, 
    desired_at FLOAT, 
    reported_name VARCHAR, 
    reported_version INTEGER, 
    reported_state VARCHAR, 
    reported_error VARCHAR, 
    reported_since FLOAT, 
    active_name VARCHAR, 
    active_version INTEGER, 
    active_sha256 VARCHAR, 
    heartbeat JSON, 
    telemetry_readings INTEGER NOT NULL, 
    telemetry_batches INTEGER NOT NULL, 
    anomalies INTEGER NOT NULL, 
    PRIMARY KEY (device_id)
);
CREATE INDEX ix_devices_group ON devices ("group");
CREATE TABLE telemetry (
    device_id VARCHAR(64) NOT NULL, 
    seq INTEGER NOT NULL, 
    channels JSON NOT NULL, 
    readings INTEGER NOT NULL, 
    ts_first FLOAT NOT NULL, 
    ts_last FLOAT NOT NULL, 
    ts_blob BLOB NOT NULL, 
    values_blob BLOB NOT NULL, 
    stored_at FLOAT NOT NULL, 
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX ix_telemetry_device_ts ON telemetry (device_id, ts_first);
CREATE TABLE anomalies (
    device_id VARCHAR(64) NOT NULL, 
    seq INTEGER NOT NULL, 
    ts_start FLOAT NOT NULL, 
    ts_end FLOAT NOT NULL, 
    score FLOAT NOT NULL, 
    threshold FLOAT NOT NULL, 
    model_name VARCHAR NOT NULL, 
    model_version INTEGER NOT NULL, 
    channels JSON NOT NULL, 
    detected_at FLOAT NOT NULL, 
    stored_at FLOAT NOT NULL, 
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX ix_anomalies_stored_at ON anomalies (stored_at);
CREATE INDEX ix_anomalies_device_ts ON anomalies (device_id, ts_start);
CREATE TABLE dead_letters (
    id INTEGER NOT NULL, 
    topic VARCHAR NOT NULL, 
    reason VARCHAR NOT NULL, 
    payload_preview VARCHAR NOT NULL, 
    payload_size INTEGER NOT NULL, 
    received_at FLOAT NOT NULL, 
    PRIMARY KEY (id)
);
CREATE INDEX ix_dead_letters_received_at ON dead_letters (received_at);
CREATE TABLE api_keys (
    id INTEGER NOT NULL, 
    name VARCHAR(64) NOT NULL, 
    key_hash VARCHAR(64) NOT NULL, 
    prefix VARCHAR(12) NOT NULL, 
    scope VARCHAR NOT NULL, 
    created_at FLOAT NOT NULL, 
    revoked_at FLOAT, 
    PRIMARY KEY (id)
);
CREATE UNIQUE INDEX ix_api_keys_key_hash ON api_keys (key_hash);
CREATE TABLE rollout_devices (
    rollout_id INTEGER NOT NULL, 
    device_id VARCHAR(64) NOT NULL, 
    stage INTEGER NOT NULL, 
    previous_name VARCHAR, 
    previous_version INTEGER, 
    desired_at FLOAT, 
    confirmed_at FLOAT, 
    failed_at FLOAT, 
    failure VARCHAR, 
    reverted_at FLOAT, 
    revert_confirmed_at FLOAT, 
    baseline_rate FLOAT, 
    PRIMARY KEY (rollout_id, device_id), 
    FOREIGN KEY(rollout_id) REFERENCES rollouts (id)
);

"""


def _old_rows(conn: object) -> None:
    """A device that sent 3 telemetry batches and an anomaly, an API key, a dead letter."""
    run = conn.execute  # type: ignore[attr-defined]
    run(text("INSERT INTO devices (device_id, online, agent_version, tags, telemetry_readings, "
             "telemetry_batches, anomalies) VALUES ('pump-1', true, '0.1.0', '[]', 6, 3, 1)"))
    for seq in range(3):
        run(text("INSERT INTO telemetry (device_id, seq, channels, readings, ts_first, ts_last, "
                 "ts_blob, values_blob, stored_at) VALUES ('pump-1', :seq, '[\"a\"]', 2, :t0, "
                 ":t1, :ts, :vals, :t1)"),
            {"seq": seq, "t0": 100.0 + 2 * seq, "t1": 101.0 + 2 * seq,
             "ts": struct.pack("<2d", 100.0 + 2 * seq, 101.0 + 2 * seq),
             "vals": struct.pack("<2d", float(seq), float(seq) + 0.5)})
    run(text("INSERT INTO anomalies (device_id, seq, ts_start, ts_end, score, threshold, "
             "model_name, model_version, channels, detected_at, stored_at) VALUES "
             "('pump-1', 0, 100.0, 105.0, 3.0, 1.0, 'pump-ae', 1, '[\"a\"]', 105.0, 106.0)"))
    run(text("INSERT INTO api_keys (name, key_hash, prefix, scope, created_at) VALUES "
             "('ops', :h, 'old-key-', 'admin', 1.0)"), {"h": hash_api_key("old-key-0123456789")})
    run(text("INSERT INTO dead_letters (topic, reason, payload_preview, payload_size, "
             "received_at) VALUES ('t', 'bad', 'x', 1, 1.0)"))


def _make_old(engine: Engine) -> None:
    ddl = SCHEMA_98792CC
    if engine.dialect.name == "postgresql":  # what create_all wrote there
        ddl = ddl.replace(" BLOB ", " BYTEA ").replace("id INTEGER NOT NULL", "id SERIAL NOT NULL")
    with engine.begin() as conn:
        for statement in ddl.split(";"):
            if statement.strip():
                conn.execute(text(statement))
        _old_rows(conn)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a PostgreSQL database made for the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    with made_pg_database("edgeloop_mig_") as url:
        yield url


def test_a_database_at_98792cc_is_upgraded_with_its_data_kept_and_usable(empty_url: str) -> None:
    old = create_engine(empty_url)
    _make_old(old)
    old.dispose()

    engine = make_engine(empty_url)  # what the hub does at start-up
    try:
        assert state(engine).current == head()
        with Session(engine) as session:
            rows = session.exec(select(TelemetryBatchRow).order_by(TelemetryBatchRow.seq)).all()
            assert [(r.epoch, r.seq) for r in rows] == [("legacy0000000000", s) for s in range(3)]
            import re
            assert not re.match(EPOCH_PATTERN, rows[0].epoch), "an old epoch looks like a real one"
            piece = read_telemetry(session, device_id="pump-1")
            assert piece.ts.tolist() == [100.0, 101.0, 102.0, 103.0, 104.0, 105.0]
            assert piece.values[:, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
            key = session.exec(select(ApiKey).where(
                ApiKey.key_hash == hash_api_key("old-key-0123456789"))).one()
            assert key.scope == "admin"
        # The device goes on with a real epoch from seq 0: nothing collides with its old rows.
        with Session(engine) as session:
            result = store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
                device_id="pump-1", epoch="0123456789abcdef", seq=0, channels=["a"],
                ts=[200.0], values=[[9.0]])]))
        assert (result.telemetry_batches, result.duplicates) == (1, 0)
        with Session(engine) as session:
            device = session.get(Device, "pump-1")
            assert device is not None
            assert (device.telemetry_batches, device.telemetry_readings) == (4, 7)
            assert read_telemetry(session, device_id="pump-1").values[-1, 0] == 9.0
        again = make_engine(empty_url)  # a restart finds nothing to do
        assert state(again).current == head()
        again.dispose()
    finally:
        engine.dispose()


def test_the_migrations_build_the_schema_the_tables_declare(empty_url: str) -> None:
    """Every table and column on SQLModel.metadata has a migration: a future column added
    without one fails here."""
    engine = create_engine(empty_url)
    try:
        upgrade(engine, fresh="migrate")
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(
                conn, opts={"compare_type": True, "include_name": include_name}),
                SQLModel.metadata)
        assert diff == [], f"schema differences not covered by a migration: {diff}"
    finally:
        engine.dispose()


def test_a_database_from_a_newer_hub_is_refused_with_the_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    make_engine(url).dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew, match="9999.*newer hub"):
        make_engine(url)


@pytest.mark.parametrize("fresh", ["create", "migrate"])
def test_postgres_telemetry_blobs_are_compressed_with_lz4_however_the_schema_was_made(
        fresh: str) -> None:
    """A new database (from the tables) and an upgraded one (from the migrations) alike; a
    100-reading batch then reads back as it was stored."""
    with made_pg_database("edgeloop_lz4_") as url:
        engine = create_engine(url)
        try:
            upgrade(engine, fresh=fresh)
            with engine.connect() as conn:
                if not conn.execute(text(
                        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                        "WHERE name = 'default_toast_compression'")).scalar():
                    pytest.skip("this PostgreSQL server was built without lz4")
                methods = set(conn.execute(text(
                    "SELECT c.relname, a.attname, a.attcompression FROM pg_attribute a "
                    "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relname LIKE 'telemetry%' "
                    "AND c.relkind IN ('r', 'p') AND a.attname IN ('ts_blob', 'values_blob')"
                )).all())
            tables = {t for t, _, _ in methods}
            assert {"telemetry", "telemetry_default"} < tables and len(tables) >= 6, \
                "the parent, the default partition and the coming days"
            assert {(a, m) for _, a, m in methods} == {("ts_blob", "l"), ("values_blob", "l")}
            batch = TelemetryBatch(device_id="pump-1", epoch="0123456789abcdef", seq=0,
                                   channels=[f"c{i}" for i in range(8)],
                                   ts=[float(t) for t in range(100)],
                                   values=[[t * 0.001 + c for c in range(8)] for t in range(100)])
            with Session(engine) as session:
                store_batch(session, IngestBatch(telemetry=[batch]))
            with Session(engine) as session:
                piece = read_telemetry(session, device_id="pump-1")
                stored = session.exec(select(TelemetryBatchRow)).one()
                with session.connection() as conn:
                    method = conn.execute(text(
                        "SELECT pg_column_compression(values_blob) FROM telemetry")).scalar()
            assert piece.values.tolist() == batch.values and len(stored.values_blob) == 6400
            assert method == "lz4"
        finally:
            engine.dispose()


def test_db_current_and_upgrade_say_where_the_schema_is_and_serve_refuses_a_newer_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(data_dir))
    monkeypatch.delenv("EDGELOOP_DATABASE_URL", raising=False)
    db_file = data_dir / "hub.db"

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    # Reading where a database is makes none where there was none.
    code, _, err = run("db", "current")
    assert (code, f"no hub database at {db_file}" in err) == (2, True), err
    assert not data_dir.exists()

    code, out, _ = run("db", "upgrade")
    assert (code, out.strip()) == (0, f"sqlite:///{db_file}: schema revision none -> {head()}")
    code, out, _ = run("db", "current")
    assert (code, out.strip()) == (0, f"sqlite:///{db_file}: schema revision {head()} "
                                      "(up to date)")

    engine = create_engine(f"sqlite:///{db_file}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    code, out, _ = run("db", "current")
    assert code == 0 and f"revision 9999 (newer than this hub's {head()}" in out, out
    code, _, err = run("db", "upgrade")
    assert code == 1 and err.startswith("error: the database is at schema revision 9999"), err

    # serve refuses it at start-up, saying why, before it touches the broker (none listens).
    hub = HubProcess(data_dir, mqtt_port=free_port())
    hub.launch()
    assert hub.wait_exit(120) == 1
    log = hub.log_tail()
    assert "error: the database is at schema revision 9999" in log and "newer hub" in log, log
    assert "Traceback" not in log, log
    with create_engine(f"sqlite:///{db_file}").connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "9999"
