"""The one sensor CSV reader: SKAB's ';' files and plain CSV, labels left out, errors that name
the line and the column. The agent's CSV source and the hub's training uploads both use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.sources.csv_source import CsvSource
from shared.sensor_csv import CsvFormatError, parse_time, read_layout, read_table

SKAB_HEADER = ("datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;"
               "Thermocouple;Voltage;Volume Flow RateRMS;anomaly;changepoint")
SKAB_CHANNELS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
                 "Thermocouple", "Voltage", "Volume Flow RateRMS")


def _skab_text(rows: int) -> str:
    lines = [SKAB_HEADER] + [
        f"2020-03-09 10:14:{s:02d};0.02;0.04;1.33;0.05;79.3;26.0;233.0;{32 + s};0.0;0.0"
        for s in range(rows)
    ]
    return "\n".join(lines) + "\n"


def test_skab_layout_takes_the_separator_time_and_leaves_labels_out() -> None:
    layout = read_layout(SKAB_HEADER)
    assert layout.separator == ";"
    assert layout.time_column == "datetime"
    assert layout.channels == SKAB_CHANNELS


def test_plain_csv_layout_with_a_capitalised_time_column() -> None:
    layout = read_layout("Timestamp,a,b,Anomaly\n")
    assert (layout.separator, layout.time_column, layout.channels) == (",", "Timestamp",
                                                                       ("a", "b"))


def test_chosen_columns_may_include_a_label_but_must_exist() -> None:
    assert read_layout(SKAB_HEADER, columns=["Current", "anomaly"]).channels == ("Current",
                                                                                  "anomaly")
    with pytest.raises(CsvFormatError, match=r"column\(s\) \['Nope'\] not in the header"):
        read_layout(SKAB_HEADER, columns=["Current", "Nope"])


def test_a_row_gives_its_time_and_values_or_names_the_column() -> None:
    layout = read_layout("ts,a,b")
    assert layout.row(["1700000000.5", "1", "2.5"]) == (1700000000.5, (1.0, 2.5))
    with pytest.raises(ValueError, match="column 'b': 'x' is not a number"):
        layout.row(["1", "1", "x"])
    with pytest.raises(ValueError, match="column 'a': 'inf' is not finite"):
        layout.row(["1", "inf", "2"])
    with pytest.raises(ValueError, match="2 fields, the header has 3"):
        layout.row(["1", "2"])
    assert parse_time("2020-03-09 10:14:00") == pytest.approx(1583748840.0)


def test_read_table_reads_skab_text_and_names_the_first_bad_line() -> None:
    layout, rows = read_table(_skab_text(5))
    assert layout.channels == SKAB_CHANNELS and len(rows) == 5
    assert rows[2][-1] == 34.0
    with pytest.raises(CsvFormatError, match=r"^line 3, column 'a': 'x' is not a number$"):
        read_table("ts,a,b\n1,2,3\n2,x,4\n")


def test_the_agent_and_the_hub_read_a_file_the_same_way(tmp_path: Path) -> None:
    from cloud_hub.jobs.upload import parse_training_csv  # numpy only: runs in the edge venv
    path = tmp_path / "skab.csv"
    path.write_text(_skab_text(6))
    source = CsvSource(path, replay_speed=0)
    values, channels = parse_training_csv(path.read_text())
    readings = []
    while not source.exhausted:
        readings.extend(source.read(0.1))
    assert tuple(channels) == tuple(source.channels) == SKAB_CHANNELS
    assert [tuple(float(v) for v in row) for row in values] == [
        tuple(pytest.approx(v, rel=1e-6) for v in r.values) for r in readings]
