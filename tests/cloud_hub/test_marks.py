"""Delivery watermarks and the missing-batch count, on a real SQLite file and on PostgreSQL (no
broker)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db.drift_tables import DeviceDrift, DriftSummaryRow
from cloud_hub.db.engine import make_engine
from cloud_hub.db.ingest_store import IngestBatch, StoreResult, store_batch
from cloud_hub.db.marks import MarkKey, Stream, acks_for, stored_runs
from cloud_hub.db.queries import telemetry_summary
from shared.messages import (
    AnomalyEvent,
    DriftSummary,
    ModelRef,
    StreamAck,
    TelemetryBatch,
    encode,
)
from tests.pg import hub_engine

pytestmark = pytest.mark.hub
OLD, NEW = "00000000000000aa", "00000000000000bb"


def _t(seq: int, *, floor: int = 0, epoch: str = OLD, device: str = "pump-1") -> TelemetryBatch:
    return TelemetryBatch(device_id=device, epoch=epoch, seq=seq, floor=floor, channels=["a"],
                          ts=[float(seq)], values=[[float(seq)]])


def _a(seq: int, *, floor: int = 0, epoch: str = OLD) -> AnomalyEvent:
    return AnomalyEvent(device_id="pump-1", epoch=epoch, seq=seq, floor=floor, ts=(1.0, 2.0),
                        score=2.0, threshold=1.0, model=ModelRef(name="m", version=1),
                        channels=[], detected_at=2.0)


def _store(engine: Engine, *telemetry: TelemetryBatch,
           anomalies: tuple[AnomalyEvent, ...] = ()) -> StoreResult:
    with Session(engine) as session:
        return store_batch(session, IngestBatch(telemetry=list(telemetry),
                                                anomalies=list(anomalies)))


def _ack(engine: Engine, epoch: str = OLD) -> tuple[StreamAck, StreamAck]:
    with Session(engine) as session:
        [ack] = acks_for(session, [("pump-1", epoch)], at=time.time())
    return ack.telemetry, ack.anomalies


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """SQLite, or PostgreSQL, where the watermarks move by one statement with arrays."""
    with hub_engine(request.param, tmp_path) as made:
        yield made


def test_the_watermark_covers_only_seqs_stored_without_a_gap_from_zero(engine: Engine) -> None:
    result = _store(engine, _t(1), _t(2), _t(2))
    assert (result.telemetry_batches, result.duplicates) == (2, 1)
    assert result.touched == (("pump-1", OLD),)
    assert _ack(engine)[0] == StreamAck(watermark=-1, top=2), "seq 0 is missing"
    _store(engine, _t(0))
    assert _ack(engine)[0] == StreamAck(watermark=2, top=2)
    _store(engine, _t(4))
    assert _ack(engine)[0] == StreamAck(watermark=2, top=4)


def test_a_floor_lets_the_watermark_pass_what_the_device_dropped(engine: Engine) -> None:
    _store(engine, _t(0), _t(1))
    _store(engine, _t(6, floor=6), _t(7, floor=6))  # seqs 2-5 dropped by the device's outbox
    assert _ack(engine)[0] == StreamAck(watermark=7, top=7)
    _store(engine, _t(9, floor=8))  # 8 still held by the device and not stored: a real gap
    assert _ack(engine)[0] == StreamAck(watermark=7, top=9)


def test_a_message_sent_again_still_advances_its_stream(engine: Engine) -> None:
    _store(engine, _t(1))
    _store(engine, _t(0))
    result = _store(engine, _t(1))  # a duplicate: nothing stored, but the stream is answered
    assert (result.telemetry_batches, result.duplicates, result.touched) == (
        0, 1, (("pump-1", OLD),))
    assert _ack(engine)[0].watermark == 1


def test_streams_and_epochs_have_their_own_watermarks(engine: Engine) -> None:
    _store(engine, _t(0), _t(1), anomalies=(_a(1),))
    _store(engine, _t(0, epoch=NEW))
    assert _ack(engine) == (StreamAck(watermark=1, top=1), StreamAck(watermark=-1, top=1))
    assert _ack(engine, NEW) == (StreamAck(watermark=0, top=0), StreamAck())
    _store(engine, anomalies=(_a(0),))
    assert _ack(engine)[1] == StreamAck(watermark=1, top=1)


def test_a_device_that_lost_its_state_is_stored_again_from_seq_zero(engine: Engine) -> None:
    _store(engine, *[_t(i) for i in range(5)])
    result = _store(engine, *[_t(i, epoch=NEW) for i in range(3)])
    assert (result.telemetry_batches, result.duplicates) == (3, 0), \
        "a new epoch's seq 0-2 are new messages, not duplicates of the old epoch's"
    with Session(engine) as session:
        [row] = telemetry_summary(session).rows
    assert (row["readings"], row["batches"], row["epochs"], row["missing_batches"]) == (
        8, 8, 2, 0)
    assert (row["seq_first"], row["seq_last"]) == (0, 2), "the latest epoch's range"


def test_missing_batches_counts_gaps_at_the_start_of_every_epoch(engine: Engine) -> None:
    _store(engine, _t(3), _t(4), _t(6))  # 0-2 and 5 never arrived
    _store(engine, _t(2, epoch=NEW))  # 0-1 of the new epoch never arrived
    with Session(engine) as session:
        [row] = telemetry_summary(session).rows
    assert row["missing_batches"] == 4 + 2


def test_two_hub_processes_advance_each_others_watermarks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = make_engine(url), make_engine(url)
    _store(first, _t(1), _t(3))
    _store(second, _t(0))  # the other hub stores the missing seq 0
    assert _ack(first)[0] == StreamAck(watermark=1, top=3)
    _store(first, _t(2))
    assert _ack(second)[0] == StreamAck(watermark=3, top=3)


def _d(seq: int, *, end: float, state: str = "stable", epoch: str = OLD) -> DriftSummary:
    from shared.messages import DriftState

    return DriftSummary(device_id="pump-1", epoch=epoch, seq=seq, start=end - 10.0, end=end,
                        state=DriftState(state), since=end - 5.0 if state == "drift" else None,
                        drifting=["flow"] if state == "drift" else [], windows=100,
                        anomalies=7, baseline_windows=300, baseline_anomalies=3)


def test_drift_summaries_are_stored_once_with_their_own_watermark_and_latest_state(
    engine: Engine,
) -> None:
    with Session(engine) as session:
        result = store_batch(session, IngestBatch(drift=[_d(1, end=30.0, state="drift"),
                                                         _d(0, end=20.0), _d(1, end=30.0)]))
    assert (result.drift_summaries, result.duplicates) == (2, 1)
    assert result.touched == (("pump-1", OLD),)
    with Session(engine) as session:
        [ack] = acks_for(session, [("pump-1", OLD)], at=time.time())
        assert ack.drift == StreamAck(watermark=1, top=1)
        assert ack.telemetry == StreamAck(watermark=-1, top=-1)
        state = session.get(DeviceDrift, "pump-1")
        assert state is not None
        assert (state.state, state.drifting, state.since) == ("drift", ["flow"], 25.0)
        assert (state.windows, state.anomalies, state.baseline_anomalies) == (100, 7, 3)
    with Session(engine) as session:  # a late summary of an earlier period changes nothing
        store_batch(session, IngestBatch(drift=[_d(5, end=25.0)]))
    with Session(engine) as session:
        state = session.get(DeviceDrift, "pump-1")
        assert state is not None and state.state == "drift"
        assert session.get(DriftSummaryRow, ("pump-1", OLD, 5)) is not None


def test_an_ack_names_drift_only_for_a_device_that_sent_drift_summaries(
    engine: Engine,
) -> None:
    _store(engine, _t(0))
    with Session(engine) as session:
        [ack] = acks_for(session, [("pump-1", OLD)], at=time.time())
    assert ack.drift is None and b"drift" not in encode(ack)


def test_a_batch_larger_than_one_insert_statement_stores_each_key_once(engine: Engine) -> None:
    """SQLite inserts telemetry 250 rows per statement: a batch of several statements, with
    duplicates inside it and of rows stored before, stores each key once and counts the
    rest as duplicates."""
    first = _store(engine, *[_t(s) for s in range(0, 300)])
    assert (first.telemetry_batches, first.duplicates) == (300, 0)
    again = [_t(s) for s in range(200, 800)] + [_t(s) for s in range(700, 760)]
    second = _store(engine, *again)
    assert (second.telemetry_batches, second.duplicates) == (500, 160)
    telemetry, _ = _ack(engine)
    assert telemetry.watermark == 799
    with Session(engine) as session:
        [row] = telemetry_summary(session).rows
    assert row["batches"] == 800 and row["missing_batches"] == 0


def test_stored_runs_are_the_consecutive_seqs_from_each_streams_lowest() -> None:
    keys = [("a", OLD, 3), ("a", OLD, 4), ("a", OLD, 5), ("a", OLD, 7), ("a", OLD, 8),
            ("a", NEW, 0), ("b", OLD, 9), ("b", OLD, 11)]
    assert stored_runs(Stream.ANOMALIES, keys) == {
        MarkKey("a", OLD, Stream.ANOMALIES): (3, 5), MarkKey("a", NEW, Stream.ANOMALIES): (0, 0),
        MarkKey("b", OLD, Stream.ANOMALIES): (9, 9)}
    assert stored_runs(Stream.TELEMETRY, []) == {}


def test_watermarks_match_a_reference_over_random_batches(engine: Engine) -> None:
    """Batches of random seqs, out of order, sent again, with floors raised now and then, for
    two devices and two epochs: after every batch each stream's watermark is the end of the
    run of stored seqs from max(watermark, floor - 1) + 1, as computed here."""
    rng = random.Random(15)
    streams = [(d, e) for d in ("pump-1", "pump-2") for e in (OLD, NEW)]
    stored: dict[tuple[str, str], set[int]] = {s: set() for s in streams}
    dropped = dict.fromkeys(streams, 0)  # the sender's floor: what it no longer holds
    floor = dict.fromkeys(streams, 0)  # the highest floor the hub was sent
    expected = dict.fromkeys(streams, -1)
    seen = dict.fromkeys(streams, False)
    for _ in range(40):
        batch = []
        for key in rng.sample(streams, rng.randint(1, 4)):
            if rng.random() < 0.15:
                dropped[key] += rng.randint(0, 4)
            top = max(stored[key], default=-1)
            seqs = rng.sample(range(max(dropped[key] - 3, 0), top + 6), rng.randint(1, 5))
            batch += [_t(q, floor=min(dropped[key], q), epoch=key[1], device=key[0])
                      for q in seqs]
        _store(engine, *batch)
        for m in batch:
            key = (m.device_id, m.epoch)
            seen[key] = True
            floor[key] = max(floor[key], m.floor)
            stored[key].add(m.seq)
        for key in streams:
            if not seen[key]:
                continue
            mark = max(expected[key], floor[key] - 1)
            while mark + 1 in stored[key]:
                mark += 1
            expected[key] = mark
        with Session(engine) as session:
            acks = {(a.device_id, a.epoch): a.telemetry.watermark
                    for a in acks_for(session, [k for k in streams if seen[k]], at=0.0)}
        assert acks == {k: expected[k] for k in streams if seen[k]}


def test_acknowledgements_of_thousands_of_streams_in_one_call(engine: Engine) -> None:
    """Keys over more than one statement (SQLite: 2,048 a statement, the last padded to a power
    of two with a key repeated), a device with two epochs of which one is asked, and a key
    with no mark: one acknowledgement per key asked that has marks, each from its own."""
    devices = [f"pump-{i:04d}" for i in range(2500)]
    _store(engine, *[_t(i % 5, device=d) for i, d in enumerate(devices)],
           *[_t(s, device=d) for d in devices[:3] for s in range(5) if s != devices.index(d)])
    _store(engine, _t(0, epoch=NEW, device=devices[7]))
    wanted = [(d, OLD) for d in devices] + [("pump-none", OLD)]
    with Session(engine) as session:
        acks = acks_for(session, wanted, at=1.0)
    assert [(a.device_id, a.epoch) for a in acks] == [(d, OLD) for d in devices]
    by_device = {a.device_id: a.telemetry for a in acks}
    # devices 0-2 hold seqs 0..4; the others one seq i % 5 each, so a watermark only at seq 0
    assert [by_device[d] for d in devices[:3]] == [StreamAck(watermark=4, top=4)] * 3
    assert by_device[devices[5]] == StreamAck(watermark=0, top=0)
    assert by_device[devices[8]] == StreamAck(watermark=-1, top=3)


def test_sqlite_looks_each_acknowledged_stream_up_in_its_key(tmp_path: Path) -> None:
    """Not a scan of every mark per statement (the plan a row-value IN list got)."""
    from cloud_hub.db.marks import _acks_sqlite

    with hub_engine("sqlite", tmp_path) as engine, engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + _acks_sqlite(16), ("d", "e") * 16))
    assert "SEARCH m USING INDEX" in plan and "SCAN m" not in plan, plan
