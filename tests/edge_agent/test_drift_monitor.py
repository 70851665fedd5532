"""Drift monitoring on the device: statistics, change detection and the summary it sends."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from edge_agent.drift.federated import FederatedSettings, WindowScatter
from edge_agent.drift.monitor import SCORE, DriftMonitor, DriftSettings
from shared.messages import DriftState, DriftSummary, ModelRef, decode, encode
from shared.scatter import unpack_upper

CHANNELS = ["pressure", "flow", "temp", "vibration"]
RATE = 10.0
SETTINGS = DriftSettings(block_s=2.0, reference_blocks=30)


def _readings(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated, autocorrelated channels: a slow shared load plus noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    load = np.zeros(n)
    for i in range(1, n):
        load[i] = 0.98 * load[i - 1] + rng.normal(0, 0.2)
    values = np.stack([10 + load, 5 + 0.5 * load, 40 + 0.2 * load, np.zeros(n)], axis=1)
    values += rng.normal(0, 0.3, values.shape)
    return np.arange(n) / RATE + 1_000.0, values


def _feed(monitor: DriftMonitor, ts: np.ndarray, values: np.ndarray,
          score: float | None = None) -> list[float]:
    """Feed readings (and, with ``score``, one scored window each); when drift states began."""
    began = []
    for t, row in zip(ts, values, strict=True):
        before = monitor.state
        if score is not None:
            monitor.window_scored(ts=(t - 1.0, t), score=score, threshold=1.0,
                                  anomalous=score > 1.0)
        monitor.observe(float(t), row.tolist())
        if monitor.state is DriftState.DRIFT and before is not DriftState.DRIFT:
            began.append(float(t))
    return began


def test_a_stationary_device_warms_up_then_stays_stable() -> None:
    monitor = DriftMonitor(SETTINGS, CHANNELS)
    ts, values = _readings(600)
    assert _feed(monitor, ts[:100], values[:100]) == []
    assert monitor.state is DriftState.WARMING
    assert _feed(monitor, ts[100:], values[100:]) == []
    assert monitor.state is DriftState.STABLE
    assert monitor.detections == 0


def test_a_recalibrated_channel_is_named_with_when_its_drift_began() -> None:
    monitor = DriftMonitor(SETTINGS, CHANNELS)
    ts, values = _readings(400, seed=1)
    values[ts >= 1_200.0, 1] += 3.0  # flow reads 3 units high from then on (a recalibration)
    began = _feed(monitor, ts, values)
    assert len(began) == 1 and 1_200.0 < began[0] < 1_260.0
    brief = monitor.brief()
    assert brief.state is DriftState.DRIFT and brief.channels == ["flow"]
    assert brief.since == began[0]


def test_a_short_fault_is_not_drift_and_a_drift_that_ends_clears() -> None:
    monitor = DriftMonitor(SETTINGS, CHANNELS)
    ts, values = _readings(500, seed=2)
    values[(ts >= 1_100.0) & (ts < 1_102.0), 0] += 20.0  # two seconds of a big step fault
    assert _feed(monitor, ts[:2500], values[:2500]) == []
    values[(ts >= 1_260.0) & (ts < 1_330.0), 2] -= 4.0  # a 70 s excursion, then back
    began = _feed(monitor, ts[2500:], values[2500:])
    assert len(began) == 1
    assert monitor.state is DriftState.STABLE, monitor.status()


def test_rising_scores_drift_and_a_new_model_starts_a_new_reference() -> None:
    monitor = DriftMonitor(SETTINGS, CHANNELS)
    monitor.model_changed(ModelRef(name="m", version=1), 1.0)
    ts, values = _readings(300, seed=3)
    _feed(monitor, ts[:1500], values[:1500], score=0.2)
    began = _feed(monitor, ts[1500:], values[1500:], score=0.9)
    assert began and monitor.brief().channels == [SCORE]
    monitor.model_changed(ModelRef(name="m", version=2), 1.0)
    assert monitor.state is DriftState.WARMING and monitor.drifting() == {}


def test_the_summary_holds_statistics_never_readings() -> None:
    monitor = DriftMonitor(SETTINGS, CHANNELS, training=WindowScatter(
        FederatedSettings(window=5, min_windows=50), len(CHANNELS)))
    monitor.model_changed(ModelRef(name="m", version=1), 1.0)
    ts, values = _readings(120, seed=4)
    values = np.round(values, 3)  # every reading a short decimal, easy to find in the JSON
    _feed(monitor, ts, values, score=0.5)
    fields = monitor.take_summary()
    assert fields is not None
    message = DriftSummary(device_id="pump-1", epoch="0123456789abcdef", seq=0, **fields)
    payload = encode(message)
    assert decode(DriftSummary, payload) == message
    numbers: set[float] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)
        elif isinstance(node, float):
            numbers.add(node)

    data = msgspec.json.decode(payload)
    collect({k: v for k, v in data.items() if k != "training"})
    readings = set(values.ravel().tolist()) | set(ts.tolist())
    # min and max are single readings by nature; every other number is a statistic
    extremes = {c[k] for c in data["channels"] for k in ("min", "max")}
    period = {data["start"], data["end"], data["since"]}
    assert not (numbers - extremes - period) & readings
    assert data["readings"] == len(ts) and data["windows"] == len(ts)
    for channel, column in zip(data["channels"], values.T, strict=True):
        assert channel["mean"] == pytest.approx(column.mean())
        assert channel["std"] == pytest.approx(column.std())
        assert abs(channel["q50"] - np.median(column)) <= 0.25 * column.std() + 1e-9


def test_training_statistics_match_the_windows_and_wait_for_enough_of_them() -> None:
    settings = FederatedSettings(window=5, stride=2, min_windows=100)
    scatter = WindowScatter(settings, len(CHANNELS))
    monitor = DriftMonitor(SETTINGS, CHANNELS, training=scatter)
    ts, values = _readings(30, seed=5)
    _feed(monitor, ts[:100], values[:100])  # 48 windows: below the floor
    first = monitor.take_summary()
    assert first is not None and first["training"] is None
    _feed(monitor, ts[100:], values[100:])
    fields = monitor.take_summary()
    assert fields is not None and fields["training"] is not None
    stats = fields["training"]
    windows = np.stack([values[i:i + 5].ravel() for i in range(0, len(values) - 4, 2)])
    assert stats.windows == len(windows)
    assert np.allclose(stats.mean, windows.mean(axis=0))
    centred = windows - windows.mean(axis=0)
    assert np.allclose(unpack_upper(stats.scatter, 20), centred.T @ centred)


def test_flagged_windows_stay_out_of_the_training_statistics() -> None:
    scatter = WindowScatter(FederatedSettings(window=5, min_windows=10), len(CHANNELS))
    monitor = DriftMonitor(SETTINGS, CHANNELS, training=scatter)
    ts, values = _readings(10, seed=6)
    for i, (t, row) in enumerate(zip(ts, values, strict=True)):
        flagged = 40 <= i < 45
        monitor.window_scored(ts=(t - 0.4, t), score=5.0 if flagged else 0.1, threshold=1.0,
                              anomalous=flagged)
        monitor.observe(float(t), row.tolist())
    n, _, _, _ = scatter.take()
    # windows touching readings 36..44 (the flagged windows) or the 5 after them are left out
    assert n < len(ts) - 4 - 10
    assert not math.isnan(float(n))


def test_drift_and_federated_settings_are_in_the_agent_config_with_their_defaults() -> None:
    from pathlib import Path

    from edge_agent.config import ConfigError, config_from_dict, load_config

    example = Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml"
    config = load_config(example)
    assert config.drift == DriftSettings() and config.federated == FederatedSettings()
    assert config.telemetry.upload == "raw"
    with pytest.raises(ConfigError, match=r"telemetry\.upload"):
        config_from_dict({"device_id": "d", "telemetry": {"upload": "everything"}})
    with pytest.raises(ConfigError, match=r"drift\.block_s"):
        config_from_dict({"device_id": "d", "drift": {"block_s": 0}})
