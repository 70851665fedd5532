"""bench/store.py: store_batch timed alone, on the hub's engine, on real SQLite and
PostgreSQL; it counts every message stored once, and says so in its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.store import _statement, main

pytestmark = [pytest.mark.hub, pytest.mark.postgres]


def test_a_small_run_times_every_statement_and_counts_every_message(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    assert main(["--databases", "sqlite,postgresql", "--devices", "7,30", "--batches", "2",
                 "--warmup", "1", "--messages", "60", "--readings", "3", "--channels", "2",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert [(c["database"], c["devices"]) for c in result["cases"]] == [
        ("sqlite", 7), ("sqlite", 30), ("postgresql", 7), ("postgresql", 30)]
    for case in result["cases"]:
        assert case["sent"] == case["rows"] == case["counted"] == 3 * 60
        assert {"UPDATE stream_marks", "INSERT stream_marks", "UPDATE devices",
                "commit"} <= set(case["statements"])
        assert case["store_ms_mean"] > case["other_ms_per_batch"] >= 0


def test_segments_report_the_rate_as_the_database_grows(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    assert main(["--databases", "sqlite,postgresql", "--devices", "5", "--batches", "2",
                 "--segments", "3", "--warmup", "1", "--messages", "40", "--readings", "2",
                 "--channels", "2", "--out", str(out)]) == 0
    for case in json.loads(out.read_text())["cases"]:
        assert case["sent"] == case["rows"] == case["counted"] == (1 + 3 * 2) * 40
        assert case["batches"] == 6
        segments = case["segments"]
        assert [g["messages_before"] for g in segments] == [40, 120, 200]
        sizes = [g["database_bytes_before"] for g in segments]
        assert sizes[0] > 0 and sizes == sorted(sizes)  # measured, and never shrinking
        assert all(g["messages_per_s_stored"] > 0 for g in segments)


def test_statements_are_named_by_verb_and_table() -> None:
    assert _statement('INSERT INTO "s1".stream_marks (a) VALUES (?)') == "INSERT stream_marks"
    assert _statement("UPDATE devices SET n = n + 1") == "UPDATE devices"
    assert _statement("SELECT a, b FROM stream_marks JOIN x") == "SELECT stream_marks"
    assert _statement("DELETE FROM dead_letters WHERE id = 1") == "DELETE dead_letters"
