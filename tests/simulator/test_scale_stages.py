"""The fleet bench's split of window-to-hub: each stage is the time between two stamps of the
same anomaly (the hub's row, the device's wire, the bystander's delivery), and the stages of
one anomaly add up to its total."""

from __future__ import annotations

import pytest

from simulator.scale_measures import stage_breakdown


def test_stages_of_one_anomaly_add_up_to_window_end_to_stored() -> None:
    row = {"device_id": "d1", "epoch": "e", "seq": 3, "ts_end": 100.0, "detected_at": 100.010,
           "stored_at": 100.200}
    fleet = {"d1": {("e", 3): {"picked": 100.004, "published": 100.012,
                               "written": 100.015, "puback": 100.020}}}
    stages = stage_breakdown([row], fleet, {("d1", "e", 3): 100.025})
    got = {name: s["p50"] for name, s in stages.items()}
    assert got == pytest.approx({
        "window_end_to_read": 4.0, "read_to_detected": 6.0, "detected_to_published": 2.0,
        "published_to_written": 3.0, "written_to_broker_delivered": 10.0,
        "broker_delivered_to_hub_stored": 175.0}, abs=0.11)
    assert sum(got.values()) == pytest.approx((row["stored_at"] - row["ts_end"]) * 1000, abs=0.5)
    assert all(s["n"] == 1 for s in stages.values())


def test_a_stage_without_both_stamps_is_left_out_not_guessed() -> None:
    rows = [{"device_id": "d1", "epoch": "e", "seq": 1, "ts_end": 10.0, "detected_at": 10.1,
             "stored_at": 10.5},
            {"device_id": "gone", "epoch": "e", "seq": 1, "ts_end": 10.0, "detected_at": 10.2,
             "stored_at": 10.6}]
    stages = stage_breakdown(rows, {"d1": {}}, {})
    assert stages["window_end_to_read"]["n"] == 0
    assert stages["window_end_to_read"]["p50"] is None
    assert stages["broker_delivered_to_hub_stored"]["n"] == 0
