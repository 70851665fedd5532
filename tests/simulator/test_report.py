"""The run report: figures come from the accounts and the score; bars are checked, not faked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulator.report import account_devices, build_report, write_report
from simulator.scoring import Event, GroundTruth, score_detections


def _report(stored: int) -> dict[str, Any]:
    faults = [GroundTruth("d1", "spike", 10.0, 11.0)]
    events = [Event("d1", 0, 9.0, 10.5, stored_at=10.75)]
    accounts = account_devices(
        {"d1": 100, "d2": 50},
        [{"device_id": "d1", "readings": stored}, {"device_id": "d2", "readings": 50}],
        events,
        {"d1": {"anomalies_raised": 1, "drops": 0}, "d2": {"anomalies_raised": 0, "drops": 0}},
    )
    return build_report(
        devices=2, duration_s=30.0, accounts=accounts, score=score_detections(faults, events),
        model={"name": "m", "version": 1, "quantization": "int8", "size_bytes": 30,
               "float_size_bytes": 100, "parity": 0.995},
        rollout={"devices_updated": 2, "seconds_to_full": 1.5}, faults=faults,
    )


def test_report_counts_what_was_generated_and_stored() -> None:
    report = _report(stored=100)
    assert report["samples_generated"] == 150
    assert report["telemetry_readings_stored"] == 150
    assert report["telemetry_lost"] == 0
    assert report["faults_detected"] == 1 and report["false_alarms"] == 0
    assert report["detection_latency_ms"] == {"p50": 750.0, "p95": 750.0, "max": 750.0}
    assert all(report["bars"].values())


def test_a_missing_reading_shows_as_lost_and_fails_its_bar() -> None:
    report = _report(stored=99)
    assert report["telemetry_lost"] == 1
    assert report["bars"]["telemetry_lost"] is False
    per_device = {d["device_id"]: d for d in report["per_device"]}
    assert per_device["d1"]["readings_lost"] == 1


def test_report_is_written_as_json_and_markdown(tmp_path: Path) -> None:
    path = write_report(_report(stored=100), tmp_path)
    assert json.loads(path.read_text())["devices"] == 2
    summary = (tmp_path / "summary.md").read_text()
    assert "| readings lost | 0 | met |" in summary
