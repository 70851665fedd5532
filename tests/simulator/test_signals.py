"""Synthetic device signals: deterministic, block-independent, correlated, load-driven."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.profiles import PROFILES
from simulator.signals import SignalGenerator, reference_spread


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_same_seed_gives_the_same_readings(profile: str) -> None:
    a = SignalGenerator(profile, seed=7, rate_hz=10, start_ts=100.0).generate(500)
    b = SignalGenerator(profile, seed=7, rate_hz=10, start_ts=100.0).generate(500)
    assert np.array_equal(a.values, b.values)
    assert np.array_equal(a.ts, b.ts)
    assert a.values.shape == (500, len(PROFILES[profile].channels))
    assert np.isfinite(a.values).all()


def test_different_seeds_give_different_devices() -> None:
    a = SignalGenerator("pump", seed=1).generate(200).values
    b = SignalGenerator("pump", seed=2).generate(200).values
    assert not np.allclose(a, b)


def test_readings_do_not_depend_on_how_they_are_requested() -> None:
    whole = SignalGenerator("pump", seed=3).generate(1000).values
    gen = SignalGenerator("pump", seed=3)
    parts = np.concatenate([gen.generate(n).values for n in (1, 99, 400, 500)])
    np.testing.assert_allclose(whole, parts, rtol=1e-9, atol=1e-9)


def test_timestamps_follow_the_rate_from_the_start_time() -> None:
    gen = SignalGenerator("motor", seed=0, rate_hz=4.0, start_ts=1000.0)
    block = gen.generate(8)
    np.testing.assert_allclose(block.ts, 1000.0 + np.arange(8) / 4.0)
    assert gen.next_ts == pytest.approx(1002.0)
    assert gen.samples == 8


def test_pump_channels_are_correlated_through_load() -> None:
    values = SignalGenerator("pump", seed=4, rate_hz=5).generate(5 * 600).values
    names = PROFILES["pump"].channel_names
    corr = np.asarray(np.corrcoef(values.T))
    flow, current = names.index("flow"), names.index("current")
    p_in = names.index("pressure_in")
    assert corr[flow, current] > 0.5
    assert corr[flow, p_in] < -0.5


def test_load_changes_move_the_operating_point() -> None:
    values = SignalGenerator("pump", seed=5, rate_hz=2).generate(2 * 900).values
    flow = values[:, PROFILES["pump"].channel_index("flow")]
    # Over 15 minutes the pump runs at several loads: flow spans a wide range.
    assert flow.max() - flow.min() > 30.0


def test_reference_spread_is_positive_for_every_channel() -> None:
    for name, profile in PROFILES.items():
        spread = reference_spread(name)
        assert spread.shape == (len(profile.channels),)
        assert (spread > 0).all()


def test_bad_rate_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="rate_hz -1"):
        SignalGenerator("pump", rate_hz=-1)


def test_unknown_profile_is_refused_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown device profile 'boiler'"):
        SignalGenerator("boiler")
