"""Many rows through one statement on SQLite without SQLAlchemy's per-row parameters
(cloud_hub.db.sqlite_many): the same rows in the tables as ``conn.execute(stmt, rows)`` leaves,
for ingest's own statements (the marks' upsert, their watermarks with the constants bound in
the statement, the device counters), and through the driver, not SQLAlchemy's compiled
path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Connection, Engine

from cloud_hub.db import sqlite_many
from cloud_hub.db.device_updates import _ADD_COUNTS
from cloud_hub.db.marks import _ADVANCE, Stream, _upsert_statement
from cloud_hub.db.tables import Device, StreamMark, TelemetryKey
from tests.pg import hub_engine

pytestmark = pytest.mark.hub

_marks = StreamMark.__table__  # type: ignore[attr-defined]
_devices = Device.__table__  # type: ignore[attr-defined]
_EPOCH = "0123456789abcdef"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two hub databases, one written the fast way and one SQLAlchemy's way."""
    (tmp_path / "fast").mkdir()
    (tmp_path / "slow").mkdir()
    with hub_engine("sqlite", tmp_path / "fast") as fast, \
            hub_engine("sqlite", tmp_path / "slow") as slow:
        yield fast, slow


def _driver_statements(engine: Engine) -> list[bool]:
    """Per executemany: True when it went to the driver as text (no compiled statement)."""
    seen: list[bool] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, _text: str, _params: Any, context: Any,
                executemany: bool) -> None:
        if executemany:
            seen.append(context.compiled is None)

    return seen


def _run(engine: Engine, write: Callable[[Connection, Any, list[dict[str, Any]]], object]) -> None:
    marks: list[dict[str, Any]] = [
        {"device_id": f"pump-{i}", "epoch": _EPOCH, "stream": "telemetry", "floor": 0,
         "top": 2 + i % 3, "watermark": -1, "first_seen": 1.5, "updated_at": 2.5,
         "pruned_through": -1} for i in range(6)]
    with engine.begin() as conn:
        conn.execute(_devices.insert(), [{"device_id": m["device_id"], "tags": []}
                                         for m in marks])
        # seqs 0..2 stored for every device: a watermark moves by the run or by the look-up
        conn.execute(TelemetryKey.__table__.insert(), [  # type: ignore[attr-defined]
            {"device_id": m["device_id"], "epoch": _EPOCH, "seq": s, "readings": 1,
             "ts_first": 0.0, "ts_last": 0.0} for m in marks for s in range(3)])
        write(conn, _upsert_statement("sqlite"), marks)
        write(conn, _upsert_statement("sqlite"), [{**m, "top": m["top"] + 1} for m in marks])
        write(conn, _ADVANCE[Stream.TELEMETRY], [
            {"b_device": m["device_id"], "b_epoch": _EPOCH, "b_stream": "telemetry",
             "b_run_start": 0 if i % 2 else None, "b_run_end": 2 if i % 2 else None}
            for i, m in enumerate(marks)])
        write(conn, _ADD_COUNTS, [{"d": m["device_id"], "r": 10 * i, "b": i, "a": i % 2,
                                   "seen": 100 + i} for i, m in enumerate(marks)])  # int


def _contents(engine: Engine) -> tuple[list[Any], list[Any]]:
    d = _devices.c
    with engine.connect() as conn:
        return (sorted(tuple(r) for r in conn.execute(select(_marks))),
                sorted(tuple(r) for r in conn.execute(select(
                    d.device_id, d.telemetry_readings, d.telemetry_batches, d.anomalies,
                    d.last_seen))))


def test_rows_end_as_sqlalchemy_leaves_them(pair: tuple[Engine, Engine]) -> None:
    fast, slow = pair
    through_driver = _driver_statements(fast)
    _run(fast, sqlite_many.executemany)
    _run(slow, lambda conn, stmt, rows: conn.execute(stmt, rows))
    assert _contents(fast) == _contents(slow)
    marks, devices = _contents(fast)
    watermarks = {r[0]: r[_marks.c.keys().index("watermark")] for r in marks}
    assert set(watermarks.values()) == {2}, watermarks  # both ways of advancing reached seq 2
    assert [r[1:] for r in devices] == [(10 * i, i, i % 2, 100.0 + i) for i in range(6)]
    # the marks' upsert twice, the watermarks, the counters: all four through the driver
    assert through_driver[-4:] == [True, True, True, True], through_driver


def test_a_statement_not_for_sqlite_goes_sqlalchemy_s_way(tmp_path: Path) -> None:
    """With a schema translation the compiled text would name the wrong tables."""
    with hub_engine("sqlite", tmp_path) as engine:
        translated = engine.execution_options(schema_translate_map={None: "main"})
        through_driver = _driver_statements(engine)
        with translated.begin() as conn:
            conn.execute(_devices.insert(), [{"device_id": "pump-1", "tags": []}])
            sqlite_many.executemany(conn, _ADD_COUNTS, [
                {"d": "pump-1", "r": 3, "b": 1, "a": 0, "seen": 7.0}])
        assert through_driver == [False] or through_driver == []
        with engine.connect() as conn:
            assert conn.execute(select(_devices.c.telemetry_readings)).scalar_one() == 3
