"""The fault library: each fault changes only its interval and channels, by its severity."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.faults import Fault, FaultError, FaultKind, fault_from_dict
from simulator.profiles import PROFILES
from simulator.signals import SignalGenerator, reference_spread

RATE = 10.0
START = 1000.0
PUMP = PROFILES["pump"]


def _pair(fault: Fault, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ts, clean values, faulty values, kept) of the same device with and without the fault."""
    clean = SignalGenerator("pump", seed=11, rate_hz=RATE, start_ts=START).generate(n)
    faulty = SignalGenerator("pump", seed=11, rate_hz=RATE, start_ts=START).generate(n, [fault])
    return clean.ts, clean.values, faulty.values, faulty.kept


def _fault(kind: FaultKind, severity: float = 1.0, **kw: object) -> Fault:
    return Fault(kind=kind, start=START + 10.0, duration=8.0, severity=severity, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kind", [FaultKind.SPIKE, FaultKind.DRIFT, FaultKind.STUCK, FaultKind.NOISE, FaultKind.STEP,
             FaultKind.MULTI, FaultKind.BEARING_WEAR]
)
def test_value_faults_change_only_their_interval_and_channels(kind: FaultKind) -> None:
    fault = _fault(kind)
    ts, clean, faulty, kept = _pair(fault)
    inside = fault.active(ts)
    changed = ~np.isclose(clean, faulty)
    channels = [PUMP.channel_index(c) for c in PUMP.default_fault_channels[kind.value]]
    others = [i for i in range(len(PUMP.channels)) if i not in channels]
    assert changed[inside][:, channels].any()
    assert not changed[~inside].any()
    assert not changed[:, others].any()
    assert kept.all()


def test_spike_amplitude_scales_with_severity() -> None:
    c = PUMP.channel_index("pressure_out")
    spread = reference_spread("pump")[c]
    amplitudes = []
    for severity in (1.0, 2.0):
        fault = _fault(FaultKind.SPIKE, severity)
        ts, clean, faulty, _ = _pair(fault)
        amplitudes.append(np.abs(faulty - clean)[fault.active(ts), c].max())
    assert amplitudes[0] == pytest.approx(6.0 * spread)
    assert amplitudes[1] == pytest.approx(2 * amplitudes[0])


def test_bearing_wear_grows_with_the_defect_frequency_and_heats_the_bearing() -> None:
    fault = Fault(kind=FaultKind.BEARING_WEAR, start=START + 5.0, duration=30.0)
    ts, clean, faulty, _ = _pair(fault, n=400)
    inside = fault.active(ts)
    vib, temp = PUMP.channel_index("vibration"), PUMP.channel_index("temperature")
    spread = reference_spread("pump")
    delta = (faulty - clean)[inside]
    first, last = delta[: len(delta) // 4], delta[-len(delta) // 4 :]
    # grows: the last quarter moves the channels far more than the first
    assert last[:, vib].mean() > 3 * first[:, vib].mean() > 0
    assert last[:, temp].mean() > 3 * first[:, temp].mean() > 0
    # at full wear: temperature about 3 spreads up, vibration 4 spreads ± 60 % at 2.9 Hz
    assert delta[-1, temp] == pytest.approx(3.0 * spread[temp], rel=0.05)
    vibration = last[:, vib] / spread[vib]
    assert vibration.max() > 5.0 and vibration.min() < 3.0
    spectrum = np.abs(np.fft.rfft(delta[:, vib] - np.linspace(0, delta[-1, vib], len(delta))))
    freqs = np.fft.rfftfreq(len(delta), d=1.0 / RATE)
    assert abs(freqs[1:][np.argmax(spectrum[1:])] - 2.9) < 0.1


def test_drift_grows_over_the_interval() -> None:
    fault = _fault(FaultKind.DRIFT)
    ts, clean, faulty, _ = _pair(fault)
    c = PUMP.channel_index("temperature")
    offset = (faulty - clean)[fault.active(ts), c]
    assert offset[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(offset) > 0)


def test_stuck_sensor_repeats_one_value() -> None:
    fault = _fault(FaultKind.STUCK)
    ts, _, faulty, _ = _pair(fault)
    c = PUMP.channel_index("pressure_out")
    stuck = faulty[fault.active(ts), c]
    assert np.all(stuck == stuck[0])


def test_stuck_value_does_not_depend_on_block_boundaries() -> None:
    fault = _fault(FaultKind.STUCK, severity=1.5)
    whole = SignalGenerator("pump", seed=2, rate_hz=RATE, start_ts=START).generate(300, [fault])
    gen = SignalGenerator("pump", seed=2, rate_hz=RATE, start_ts=START)
    parts = np.concatenate([gen.generate(n, [fault]).values for n in (105, 3, 192)])
    np.testing.assert_allclose(whole.values, parts)


def test_noise_burst_raises_the_variance() -> None:
    fault = _fault(FaultKind.NOISE, severity=2.0)
    ts, clean, faulty, _ = _pair(fault)
    c = PUMP.channel_index("vibration")
    extra = (faulty - clean)[fault.active(ts), c]
    assert extra.std() > 1.5 * reference_spread("pump")[c]


def test_dropout_removes_readings_of_its_interval() -> None:
    fault = _fault(FaultKind.DROPOUT)
    ts, _, _, kept = _pair(fault)
    assert not kept[fault.active(ts)].any()
    assert kept[~fault.active(ts)].all()


def test_frequency_shift_speeds_up_the_cycle() -> None:
    fault = Fault(kind=FaultKind.FREQUENCY, start=START, duration=60.0, severity=1.0)
    ts, clean, faulty, _ = _pair(fault, n=600)
    c = PUMP.channel_index("pressure_out")

    def crossings(x: np.ndarray) -> int:
        d = x - x.mean()
        return int(np.sum(np.sign(d[1:]) != np.sign(d[:-1])))

    assert crossings(faulty[:, c]) > 1.3 * crossings(clean[:, c])


def test_fault_fields_are_validated_by_name() -> None:
    with pytest.raises(FaultError, match="severity"):
        Fault(kind=FaultKind.SPIKE, start=1.0, duration=1.0, severity=0.0)
    with pytest.raises(FaultError, match="duration"):
        Fault(kind=FaultKind.SPIKE, start=1.0, duration=-2.0)
    with pytest.raises(FaultError, match="'meltdown' is unknown"):
        fault_from_dict({"kind": "meltdown"}, start=1.0)
    with pytest.raises(FaultError, match="unknown field"):
        fault_from_dict({"kind": "spike", "sevrity": 2}, start=1.0)


def test_fault_on_a_channel_the_profile_lacks_is_refused() -> None:
    gen = SignalGenerator("pump")
    fault = Fault(kind=FaultKind.STEP, start=1.0, duration=1.0, channels=("rpm",))
    with pytest.raises(FaultError, match="'rpm'"):
        gen.applier.check(fault)
