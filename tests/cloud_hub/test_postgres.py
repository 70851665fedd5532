"""The same store on PostgreSQL (127.0.0.1:5432, trust auth, user postgres, database test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from cloud_hub.db.conflicts import conflicts_of
from cloud_hub.db.engine import make_engine
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.queries import read_telemetry
from cloud_hub.db.tables import Anomaly, TelemetryBatchRow
from shared.messages import AnomalyEvent, ModelRef, TelemetryBatch
from tests.pg import pg_schema_engine

pytestmark = [pytest.mark.postgres, pytest.mark.hub]
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with pg_schema_engine() as engine:
        yield engine


def test_postgres_store_deduplicates_and_reads_back(pg_engine: Engine) -> None:
    def batch(seq: int) -> TelemetryBatch:
        return TelemetryBatch(device_id="pump-1", epoch="0123456789abcdef", seq=seq,
                              channels=["a"], ts=[float(seq)],
                              values=[[float(seq) * 2]])

    anomaly = AnomalyEvent(device_id="pump-1", epoch="0123456789abcdef", seq=1,
                           ts=(0.0, 1.0), score=2.0, threshold=1.0,
                           model=ModelRef(name="m", version=1), channels=[], detected_at=1.0)
    with Session(pg_engine) as session:
        first = store_batch(session, IngestBatch(telemetry=[batch(0), batch(1)],
                                                 anomalies=[anomaly]))
    with Session(pg_engine) as session:
        second = store_batch(session, IngestBatch(telemetry=[batch(1), batch(2)],
                                                  anomalies=[anomaly]))
    assert (first.telemetry_readings, first.duplicates) == (2, 0)
    assert (second.telemetry_readings, second.duplicates) == (1, 2)
    with Session(pg_engine) as session:
        assert session.exec(select(func.count()).select_from(TelemetryBatchRow)).one() == 3
        assert session.exec(select(func.count()).select_from(Anomaly)).one() == 1
        piece = read_telemetry(session, device_id="pump-1")
    assert piece.values[:, 0].tolist() == [0.0, 2.0, 4.0]


def test_postgres_pages_listings_and_filters_tags_in_sql(pg_engine: Engine) -> None:
    from cloud_hub.db.queries import list_anomalies, page_devices

    model = ModelRef(name="m", version=1)
    with Session(pg_engine) as session:
        store_batch(session, IngestBatch(
            telemetry=[TelemetryBatch(
                    epoch="0123456789abcdef", device_id=f"d-{i}", seq=s, channels=["a"],
                                      ts=[float(s * 3 + k) for k in range(3)],
                                      values=[[1.0]] * 3)
                       for i in range(4) for s in range(3)],
            anomalies=[AnomalyEvent(
                    epoch="0123456789abcdef", device_id=f"d-{i}", seq=s, ts=(0.0, 1.0), score=2.0,
                                    threshold=1.0, model=model, channels=[], detected_at=1.0)
                       for i in range(4) for s in range(2)]), now=5.0)
        for device in page_devices(session, limit=10).rows:
            device.tags = ["odd"] if device.device_id in ("d-1", "d-3") else ["even"]
            session.add(device)
        session.commit()
        seen, after = [], None
        while True:
            page = list_anomalies(session, limit=3, after=after)
            seen += [(a.device_id, a.seq) for a in page.rows]
            if page.next_key is None:
                break
            after = page.next_key
        assert seen == [(f"d-{i}", s) for i in range(4) for s in range(2)]
        odd = page_devices(session, tag="odd", limit=1)
        assert [d.device_id for d in odd.rows] == ["d-1"]
        rest = page_devices(session, tag="odd", limit=1, after=odd.next_key)
        assert [d.device_id for d in rest.rows] == ["d-3"] and rest.next_key is None
        first = read_telemetry(session, device_id="d-2", limit=4)
        assert first.ts.tolist() == [0.0, 1.0, 2.0, 3.0] and first.next_cursor is not None
        second = read_telemetry(session, device_id="d-2", limit=10, after=first.next_cursor)
        assert second.ts.tolist() == [4.0, 5.0, 6.0, 7.0, 8.0] and second.next_cursor is None


def test_two_writers_interleaving_leave_the_watermark_complete(pg_engine: Engine) -> None:
    """Two hub processes store alternate seqs of one stream concurrently, each in its own
    transactions: the last commit must see the other's rows (no stall below the top)."""
    import threading

    from cloud_hub.db.marks import acks_for

    epoch = "0123456789abcdef"
    other = make_engine(URL, create=False).execution_options(
        schema_translate_map=pg_engine.get_execution_options()["schema_translate_map"])
    errors: list[BaseException] = []

    def write(engine: Engine, first: int) -> None:
        try:
            for seq in range(first, 120, 2):
                batch = TelemetryBatch(device_id="pump-1", epoch=epoch, seq=seq, channels=["a"],
                                       ts=[float(seq)], values=[[1.0]])
                with Session(engine) as session:
                    store_batch(session, IngestBatch(telemetry=[batch]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(e, i))
               for i, e in enumerate((pg_engine, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    other.dispose()
    assert not errors, errors
    with Session(pg_engine) as session:
        [ack] = acks_for(session, [("pump-1", epoch)], at=0.0)
    assert (ack.telemetry.watermark, ack.telemetry.top) == (119, 119)


def test_the_watermark_advance_looks_up_each_successor_by_its_whole_key(
        pg_engine: Engine) -> None:
    """Advancing over a run of n stored seqs reads at most one row per seq to find each one's
    successor. PostgreSQL once planned that NOT EXISTS as an anti join that read the device's
    whole stream per seq of the run (n x stream rows), so ingest slowed as the table grew."""
    import json

    from cloud_hub.db.marks import _ADVANCE_ARRAYS, Stream, acks_for

    epoch, run = "0123456789abcdef", 300

    def batch(seq: int) -> TelemetryBatch:
        return TelemetryBatch(device_id="pump-1", epoch=epoch, seq=seq, channels=["a"],
                              ts=[float(seq)], values=[[1.0]])

    with Session(pg_engine) as session:  # seq 0 missing: the watermark stays below the run
        store_batch(session, IngestBatch(telemetry=[batch(s) for s in range(1, run)]))
    with Session(pg_engine) as session:
        store_batch(session, IngestBatch(telemetry=[batch(0)]))
        [ack] = acks_for(session, [("pump-1", epoch)], at=0.0)
    assert ack.telemetry.watermark == run - 1

    schema = pg_engine.get_execution_options()["schema_translate_map"][None]
    with pg_engine.connect() as conn:  # the same advance again, from the watermark reset
        conn.exec_driver_sql(f'SET search_path TO "{schema}"')
        conn.exec_driver_sql("UPDATE stream_marks SET watermark = -1")
        statement = _ADVANCE_ARRAYS[Stream.TELEMETRY].compile(dialect=conn.dialect)
        params = dict(statement.params, b_device=["pump-1"], b_epoch=[epoch],
                      b_stream=[Stream.TELEMETRY.value])
        [[plan]] = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + str(statement), params).all()
        watermark = conn.exec_driver_sql("SELECT watermark FROM stream_marks").scalar()
        conn.rollback()
    plan = plan if isinstance(plan, list) else json.loads(plan)

    def successor_rows(node: dict[str, Any]) -> int:
        own = (node["Actual Rows"] * node["Actual Loops"]
               if node.get("Alias") == "n" else 0)
        return own + sum(successor_rows(child) for child in node.get("Plans", []))

    assert watermark == run - 1
    read = successor_rows(plan[0]["Plan"])
    assert 0 < read <= run, f"successor lookups read {read} rows for a run of {run}"


def test_postgres_flags_a_device_id_used_by_two_sources(pg_engine: Engine) -> None:
    def batch(seq: int, epoch: str, ts: float) -> TelemetryBatch:
        return TelemetryBatch(device_id="pump-1", epoch=epoch, seq=seq, channels=["a"],
                              ts=[ts], values=[[ts]])

    a, b = "00000000000000aa", "00000000000000bb"
    for telemetry in ([batch(0, a, 0.0)], [batch(0, b, 1.0)], [batch(1, a, 2.0)],
                      [batch(1, a, 9.0)]):
        with Session(pg_engine) as session:
            store_batch(session, IngestBatch(telemetry=telemetry))
    with Session(pg_engine) as session:
        conflict = conflicts_of(session, ["pump-1"])["pump-1"]
    assert (conflict.kind, conflict.count) == ("seq", 2), "epochs first, then a seq collision"
    assert conflict.first_at <= conflict.last_at


def test_postgres_stores_drift_summaries_and_acknowledges_their_stream(
    pg_engine: Engine,
) -> None:
    import time

    from cloud_hub.db.drift_tables import DeviceDrift
    from cloud_hub.db.marks import acks_for
    from shared.messages import DriftState, DriftSummary, StreamAck

    def summary(seq: int) -> DriftSummary:
        return DriftSummary(device_id="pump-1", epoch="0123456789abcdef", seq=seq,
                            start=10.0 * seq, end=10.0 * seq + 9.0, state=DriftState.STABLE)

    with Session(pg_engine) as session:
        store_batch(session, IngestBatch(drift=[summary(0), summary(1)]))
    with Session(pg_engine) as session:
        result = store_batch(session, IngestBatch(drift=[summary(1), summary(2)]))
        assert (result.drift_summaries, result.duplicates) == (1, 1)
    with Session(pg_engine) as session:
        [ack] = acks_for(session, [("pump-1", "0123456789abcdef")], at=time.time())
        assert ack.drift == StreamAck(watermark=2, top=2)
        state = session.get(DeviceDrift, "pump-1")
        assert state is not None and state.period_end == 29.0


@pytest.mark.parametrize("values", [
    ["pump-1", "", "x" * 300, "a"], ["", ""], ["pump-1", "bé", "", "x" * 300],
    [1.5, -3e300, 0.0, 2.0], [0, 1, 70_000, 2**40],
    [1, 2], [b"\x00\x01", b"", bytes(range(256))], [True, False], [1.0, None], ["a", None],
    [[1, 2], [3, 4]], [],
])
def test_lists_reach_postgres_as_the_same_array(pg_engine: Engine, values: list[object]) -> None:
    """The hub's list dumper (cloud_hub.db.pg_arrays: flat lists built in C, the rest the
    stock way) gives PostgreSQL the array psycopg would: each value read back as sent."""
    with pg_engine.connect() as conn:
        cast = {str: "text[]", float: "float8[]", int: "int8[]", bytes: "bytea[]",
                bool: "bool[]", list: "int8[][]"}
        kind = type(next((v for v in values if v is not None), 0))
        got = conn.exec_driver_sql(f"SELECT %(a)s::{cast[kind]}", {"a": values}).scalar_one()
    assert got == values


def test_a_list_of_mixed_types_is_refused_as_psycopg_refuses_it(pg_engine: Engine) -> None:
    """An int among floats is not silently truncated or widened: psycopg's error."""
    import psycopg

    with pg_engine.connect() as conn, pytest.raises(Exception) as caught:
        conn.exec_driver_sql("SELECT %(a)s", {"a": [1, 2.5]})
    assert isinstance(caught.value.__cause__ or caught.value, psycopg.DataError) or \
        "mixed types" in str(caught.value)
