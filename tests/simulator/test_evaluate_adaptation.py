"""Adaptation on the device, with the simulator's own faults: slow faults are still caught,
a slow benign change of operating point stops raising false alarms.

The scenario of ``simulator evaluate --dataset adaptation`` runs faster here (``--speed``: season,
run, faults, hold-off and learning rate scaled together), so the tests stay short; the assertions
are about which events were raised, never about how long anything took.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.evaluate import main
from simulator.evaluate.adaptation import evaluate_adaptation

pytestmark = pytest.mark.hub

SPEED = 2.0  # the command's own scenario, twice as fast


def test_slow_faults_are_caught_and_the_season_stops_alarming_with_adaptation_on() -> None:
    report = evaluate_adaptation(speed=SPEED)
    runs = {(r["scenario"], r["adaptation"]): r for r in report["scenarios"]}
    # without adaptation the season alone raises false alarms (measured: 6) ...
    assert runs["seasonal", "off"]["false_alarms"] >= 3
    # ... with it, none, and the season's shift was learned
    assert runs["seasonal", "on"]["events"] == 0
    # the slow drift and the bearing wear are still caught, with no false alarm
    for fault in ("drift", "bearing_wear"):
        on = runs[fault, "on"]
        assert on["faults_caught"] == 1, fault
        assert on["false_alarms"] == 0, fault
        assert runs[fault, "off"]["faults_caught"] == 1, fault
    trade_off = report["trade_off"]
    assert trade_off["drift_caught"] == {"off": True, "on": True}
    assert trade_off["bearing_wear_caught"] == {"off": True, "on": True}


def test_adaptation_evaluation_has_a_command_that_writes_its_report(tmp_path: Path) -> None:
    args = ["--dataset", "adaptation", "--out", str(tmp_path), "--speed", "8", "--json"]
    assert main(args) == 0
    report = json.loads((tmp_path / "adaptation.json").read_text())
    assert report["dataset"] == "adaptation" and report["speed"] == 8.0
    assert report["adaptation_on"]["normalization"] is True
    assert {r["scenario"] for r in report["scenarios"]} == {"seasonal", "drift", "bearing_wear"}
    assert all(r["faults_caught"] == len(r["faults"]) for r in report["scenarios"])
