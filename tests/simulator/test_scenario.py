"""Scenario files: the shipped ones load; mistakes are refused naming the key and value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from simulator.attacks import load_attack_scenario
from simulator.scenario import ScenarioError, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "simulator" / "scenarios"


def test_every_shipped_scenario_loads() -> None:
    paths = sorted(SCENARIOS.glob("*.toml"))
    assert {p.stem for p in paths} >= {"baseline", "chaos", "mixed-fleet", "attacks"}
    for path in paths:
        if tomllib.loads(path.read_text()).get("kind") == "attacks":
            assert load_attack_scenario(path).name == path.stem
            continue
        if tomllib.loads(path.read_text()).get("kind") == "drift":
            from simulator.drift_scenario import load_drift_scenario

            assert load_drift_scenario(path).name == path.stem
            continue
        scenario = load_scenario(path)
        assert scenario.name == path.stem
        assert scenario.device_specs()


def test_chaos_scenario_covers_every_kind_of_trouble() -> None:
    scenario = load_scenario(SCENARIOS / "chaos.toml")
    assert {c.action for c in scenario.chaos} == {
        "broker_restart", "device_offline", "slow_device", "device_restart", "rollout"}


def test_device_ids_follow_profile_and_index() -> None:
    scenario = load_scenario(SCENARIOS / "mixed-fleet.toml")
    ids = [s.device_id for s in scenario.device_specs()]
    assert ids[:4] == ["pump-001", "pump-002", "pump-003", "motor-001"]
    assert len(set(ids)) == len(ids)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


BASE = 'name = "t"\nduration_s = 30\n[[fleet]]\nprofile = "pump"\ncount = 2\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("colour = 'red'\n", "colour"),
        ("[[faults]]\nat = 1\nkind = 'melt'\n", "faults.0.kind"),
        ("[[faults]]\nat = 1\nkind = 'spike'\ndevice = 'pump-009'\n", "pump-009"),
        ("[[faults]]\nat = 99\nkind = 'spike'\n", "after duration_s"),
        ("[[chaos]]\nat = 1\naction = 'device_offline'\n", "needs 'device'"),
        ("[[chaos]]\nat = 1\naction = 'flood'\n", "chaos.0.action"),
    ],
)
def test_bad_scenarios_are_refused_by_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(_write(tmp_path, BASE + extra))


def test_unknown_profile_is_refused(tmp_path: Path) -> None:
    text = BASE.replace('"pump"', '"boiler"')
    with pytest.raises(ScenarioError, match="boiler"):
        load_scenario(_write(tmp_path, text))


def test_broken_toml_says_so(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(_write(tmp_path, "name = \n"))
