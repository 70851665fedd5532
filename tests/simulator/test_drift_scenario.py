"""The drift scenario file: loaded strictly, and a recalibration shifts readings without being a
fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulator.drift_scenario import load_drift_scenario
from simulator.signals import reference_spread
from simulator.source import SimulatedSource

SCENARIO = Path(__file__).resolve().parents[2] / "simulator" / "scenarios" / "drift.toml"


def test_the_shipped_drift_scenario_loads() -> None:
    scenario = load_drift_scenario(SCENARIO)
    assert scenario.drifted and set(scenario.drifted) <= set(scenario.device_ids())
    assert scenario.policy["scope"] == "drifted"


def test_a_drift_scenario_naming_an_unknown_device_is_refused(tmp_path: Path) -> None:
    text = SCENARIO.read_text().replace('"pump-003"]', '"pump-042"]', 1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="pump-042"):
        load_drift_scenario(path)


def test_a_recalibration_shifts_the_channel_from_then_on_and_is_no_fault() -> None:
    clock = [1000.0]
    source = SimulatedSource(profile="pump", seed=1, rate_hz=10.0, clock=lambda: clock[0],
                             realtime=False, max_block=200)
    plain = SimulatedSource(profile="pump", seed=1, rate_hz=10.0, clock=lambda: clock[0],
                            realtime=False, max_block=200)
    source.recalibrate(source.next_ts + 10.0, {"flow": 3.0})
    a, b = source.read(0.0), plain.read(0.0)
    flow = source.channels.index("flow")
    diff = np.array([x.values[flow] - y.values[flow] for x, y in zip(a, b, strict=True)])
    assert np.allclose(diff[:100], 0.0)
    assert np.allclose(diff[100:], 3.0 * reference_spread("pump")[flow])
    assert source.ground_truth() == []
