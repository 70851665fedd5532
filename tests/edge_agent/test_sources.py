"""Sensor sources: CSV replay (SKAB format), stdin JSON lines, MQTT, plugins; bad rows counted."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_agent.sources.base import Reading, SensorSource, SourceError
from edge_agent.sources.csv_source import CsvSource
from edge_agent.sources.registry import available_sources, create_source
from edge_agent.sources.stdin_source import StdinSource
from shared.topics import TopicAccess
from simulator.broker import Broker
from tests.edge_agent.support import wait_until

REPO = Path(__file__).resolve().parents[2]
SKAB = REPO.parent / "shared" / "data" / "skab"
SKAB_HEADER = ("datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;"
               "Thermocouple;Voltage;Volume Flow RateRMS;anomaly;changepoint")


def _drain(source: SensorSource, timeout: float = 10.0) -> list[Reading]:
    out: list[Reading] = []
    deadline = time.monotonic() + timeout
    while not source.exhausted and time.monotonic() < deadline:
        out.extend(source.read(0.1))
    return out


def _skab_file(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "skab.csv"
    path.write_text(SKAB_HEADER + "\n" + "\n".join(rows) + "\n")
    return path


def _row(second: int, flow: str = "32.0") -> str:
    return f"2020-03-09 10:14:{second:02d};0.02;0.04;1.33;0.05;79.3;26.0;233.0;{flow};0.0;0.0"


def test_csv_replays_skab_format_with_column_selection(tmp_path: Path) -> None:
    path = _skab_file(tmp_path, [_row(s) for s in range(10)])
    source = CsvSource(path, columns=["Current", "Volume Flow RateRMS"], replay_speed=0,
                       timestamps="file")
    readings = _drain(source)
    assert source.separator == ";"
    assert source.channels == ["Current", "Volume Flow RateRMS"]
    assert [r.values for r in readings[:1]] == [(1.33, 32.0)]
    assert readings[1].ts - readings[0].ts == pytest.approx(1.0)
    assert len(readings) == 10


def test_csv_default_columns_leave_out_time_and_labels(tmp_path: Path) -> None:
    source = CsvSource(_skab_file(tmp_path, [_row(0)]), replay_speed=0)
    assert len(source.channels) == 8
    assert "anomaly" not in source.channels and "datetime" not in source.channels


def test_csv_replay_speed_paces_readings(tmp_path: Path) -> None:
    path = _skab_file(tmp_path, [_row(s) for s in range(5)])
    source = CsvSource(path, replay_speed=20.0)  # 4 s of data in 0.2 s
    first = source.read(0.01)
    assert len(first) == 1, "only the first row is due at once"
    rest = _drain(source)
    assert len(rest) == 4
    assert rest[-1].ts - first[0].ts == pytest.approx(0.2, abs=0.15)


def test_csv_bad_rows_are_counted_and_skipped(tmp_path: Path) -> None:
    rows = [_row(0), _row(1, flow="nan"), _row(2, flow="lots"), "2020-03-09 10:14:03;1;2",
            _row(4)]
    source = CsvSource(_skab_file(tmp_path, rows), replay_speed=0)
    readings = _drain(source)
    assert len(readings) == 2
    assert source.bad_readings == 3


def test_csv_options_are_checked_by_name(tmp_path: Path) -> None:
    path = _skab_file(tmp_path, [_row(0)])
    with pytest.raises(SourceError, match="source.options.columns"):
        create_source("csv", {"path": str(path), "columns": ["Nope"]})
    with pytest.raises(SourceError, match="unknown key"):
        create_source("csv", {"path": str(path), "speed": 2})
    with pytest.raises(SourceError, match="source.options.path"):
        create_source("csv", {"path": str(tmp_path / "missing.csv")})
    with pytest.raises(SourceError, match="source.type 'modbus' is unknown"):
        create_source("modbus", {})


@pytest.mark.skipif(not SKAB.exists(), reason="benchmark data not present at ../shared/data")
def test_csv_reads_the_real_skab_file() -> None:
    source = CsvSource(SKAB / "valve1" / "0.csv", replay_speed=0)
    readings = _drain(source, timeout=30)
    assert len(readings) == 1147 and source.bad_readings == 0
    assert len(source.channels) == 8


def test_stdin_json_lines_with_bad_lines_counted() -> None:
    lines = [
        json.dumps({"ts": 1.0, "values": {"a": 1.0, "b": 2.0}}),
        json.dumps({"values": [3.0, 4.0]}),
        "not json",
        json.dumps({"values": {"a": 1.0}}),
        json.dumps({"a": "x", "b": 1}),
        json.dumps({"ts": 5.0, "a": 5, "b": 6}),
    ]
    source = StdinSource(["a", "b"], stream=io.StringIO("\n".join(lines) + "\n"))
    readings = _drain(source)
    assert [r.values for r in readings] == [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)]
    assert readings[0].ts == 1.0 and readings[2].ts == 5.0
    assert source.bad_readings == 3


@pytest.mark.integration
def test_mqtt_source_reads_a_local_topic(broker: Broker) -> None:
    # The local sensor bus: a reader and a sensor, each with only the access it needs.
    reader = broker.add_client("pump-sensor-reader",
                               TopicAccess(publish=(), subscribe=("sensors/pump/#",)))
    sensor = broker.add_client("pump-sensor", TopicAccess(publish=("sensors/pump/1",),
                                                          subscribe=()))
    options = broker.agent_mqtt(reader)
    options.pop("topic_prefix")
    source = create_source("mqtt", {"topic": "sensors/pump/#", "channels": ["a", "b"],
                                    "client_id": reader.client_id, **options})
    publisher = broker.client(sensor, protocol=paho.MQTTv311)
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    got: list[Reading] = []
    try:
        def received() -> bool:
            publisher.publish("sensors/pump/1", json.dumps({"ts": 7.0, "a": 1, "b": 2}), qos=1)
            publisher.publish("sensors/pump/1", b"{broken", qos=1)
            got.extend(source.read(0.2))
            return bool(got) and source.bad_readings > 0

        wait_until(received, 15, "a reading and a bad payload over MQTT")
        assert got[0] == Reading(7.0, (1.0, 2.0))
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        source.close()


def test_builtin_and_plugin_sources_are_listed() -> None:
    names = available_sources()
    assert {"csv", "stdin", "mqtt"} <= set(names)


def test_plugin_sources_load_through_their_entry_point() -> None:
    """`simulated` is not built in: it comes from the simulator's "edgeloop.sources" entry."""
    from importlib.metadata import entry_points

    if not any(ep.name == "simulated" for ep in entry_points(group="edgeloop.sources")):
        pytest.skip("the project is not installed with its entry points")
    source = create_source("simulated", {"rate_hz": 50.0, "seed": 1, "realtime": False})
    try:
        readings = source.read(1.0)
        assert isinstance(source, SensorSource) and source.channels
        assert readings and len(readings[0].values) == len(source.channels)
    finally:
        source.close()
    with pytest.raises(SourceError, match="unknown option"):
        create_source("simulated", {"colour": "red"})
