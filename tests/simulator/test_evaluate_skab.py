"""``simulator evaluate`` end to end on small folders: synthetic files and real SKAB/NAB files.

Every score runs through int8 TFLite on the agent's runtime; models are tiny PCA ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from simulator.evaluate import main

pytestmark = pytest.mark.hub

# ../shared/data beside the repository; EDGELOOP_DATA points elsewhere (e.g. from a worktree)
DATA = Path(
    os.environ.get("EDGELOOP_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
)
CHANNELS = ["Accelerometer1RMS", "Current", "Pressure", "Temperature"]


def write_skab_file(
    path: Path, seed: int, fault: tuple[int, int], *, labelled: bool = True
) -> None:
    """A SKAB-format file: correlated channels, one collective anomaly in rows ``fault``."""
    rng = np.random.default_rng(seed)
    rows = 900
    t = np.arange(rows)
    base = np.sin(2 * np.pi * t / 30.0)
    values = np.stack([1 + 0.2 * base, 2 + 0.5 * base, 3 - 0.4 * base, 60 + 0.1 * base], axis=1)
    values += 0.02 * rng.normal(size=values.shape)
    labels = np.zeros(rows, dtype=int)
    labels[fault[0] : fault[1]] = 1
    values[fault[0] : fault[1], 2] += 1.0  # pressure no longer follows the cycle
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write("datetime;" + ";".join(CHANNELS) + (";anomaly;changepoint" * labelled) + "\n")
        for i in range(rows):
            row = ";".join(f"{v:.5f}" for v in values[i])
            tail = f";{labels[i]}.0;0.0" if labelled else ""
            fh.write(f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d};{row}{tail}\n")


def test_skab_evaluation_on_a_synthetic_folder_writes_the_report(tmp_path: Path) -> None:
    data = tmp_path / "skab"
    write_skab_file(data / "pumpA" / "0.csv", 1, (550, 750))
    write_skab_file(data / "pumpA" / "1.csv", 2, (600, 700))
    out = tmp_path / "reports"
    code = main(
        [
            "--dataset",
            "skab",
            "--data",
            str(data),
            "--out",
            str(out),
            "--plots",
            "1",
            "--json",
            "--window",
            "8",
            "--latent",
            "8",
        ]
    )
    assert code == 0
    report = json.loads((out / "skab.json").read_text())
    assert report["files"] == 2
    assert report["rows"] == 2 * (900 - 400)
    assert report["quantization"] == "int8"
    assert report["f1"] > 0.8 and report["far"] < 10 and report["mar"] < 30
    assert {f["file"] for f in report["per_file"]} == {"pumpA/0", "pumpA/1"}
    assert any(row["ours"] for row in report["leaderboard"])
    assert (out / "skab" / "pumpA_0.png").stat().st_size > 0
    assert (out / "skab" / "per_file.png").exists()


def test_skab_can_train_one_model_on_the_anomaly_free_file(tmp_path: Path) -> None:
    data = tmp_path / "skab"
    write_skab_file(data / "anomaly-free" / "anomaly-free.csv", 7, (0, 0), labelled=False)
    write_skab_file(data / "pumpA" / "0.csv", 1, (550, 750))
    write_skab_file(data / "pumpA" / "1.csv", 2, (600, 700))
    out = tmp_path / "reports"
    assert (
        main(
            [
                "--dataset",
                "skab",
                "--data",
                str(data),
                "--out",
                str(out),
                "--plots",
                "0",
                "--json",
                "--train-on",
                "anomaly-free",
                "--window",
                "8",
                "--latent",
                "8",
            ]
        )
        == 0
    )
    report = json.loads((out / "skab.json").read_text())
    assert report["train_on"] == "anomaly-free"
    assert report["files"] == 2  # anomaly-free.csv itself is not scored
    assert report["f1"] > 0.8 and report["far"] < 10


def test_bad_folder_is_reported_not_raised(tmp_path: Path, capsys) -> None:
    assert main(["--dataset", "skab", "--data", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_skab_file_with_a_broken_row_names_the_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "skab" / "v" / "0.csv"
    write_skab_file(path, 1, (550, 750))
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(";", ";x", 1)
    path.write_text("\n".join(lines) + "\n")
    assert (
        main(["--dataset", "skab", "--data", str(tmp_path / "skab"), "--out", str(tmp_path / "r")])
        == 2
    )
    assert "line 6" in capsys.readouterr().err


@pytest.mark.skipif(not (DATA / "skab" / "valve1").is_dir(), reason="../shared/data not present")
def test_skab_protocol_on_two_real_valve1_files(tmp_path: Path) -> None:
    data = tmp_path / "skab" / "valve1"
    data.mkdir(parents=True)
    for name in ("0.csv", "1.csv"):
        (data / name).symlink_to((DATA / "skab" / "valve1" / name).resolve())
    out = tmp_path / "reports"
    assert (
        main(
            [
                "--dataset",
                "skab",
                "--data",
                str(tmp_path / "skab"),
                "--out",
                str(out),
                "--plots",
                "0",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads((out / "skab.json").read_text())
    assert report["files"] == 2
    # Measured: F1 0.64, FAR 3.8 %, MAR 51.6 % on these two (0.855 / 9.9 / 19.0 over all 16).
    assert report["f1"] > 0.5
    assert report["far"] < 15  # flagging everything would give FAR 100
    assert report["mar"] < 70
    assert all(f["decision_agreement"] > 0.9 for f in report["per_file"])
    assert report["detector"]["adaptation"]["normalization"] is True
    assert report["selection"]["recorded"]["chosen"] == {"rate": 0.003, "threshold_factor": 2.0}


@pytest.mark.skipif(not (DATA / "nab").is_dir(), reason="../shared/data not present")
def test_nab_evaluation_on_two_real_files(tmp_path: Path) -> None:
    root = tmp_path / "nab"
    (root / "realAWSCloudwatch").mkdir(parents=True)
    labels = json.loads((DATA / "nab" / "windows_realAWSCloudwatch.json").read_text())
    keep = dict(sorted(labels.items())[:2])
    for name in keep:
        (root / name).symlink_to((DATA / "nab" / name).resolve())
    (root / "windows_realAWSCloudwatch.json").write_text(json.dumps(keep))
    out = tmp_path / "reports"
    assert (
        main(["--dataset", "nab", "--data", str(root), "--out", str(out), "--plots", "1", "--json"])
        == 0
    )
    report = json.loads((out / "nab.json").read_text())
    assert report["files"] == 2
    for profile in ("standard", "reward_low_fp", "reward_low_fn"):
        assert -200 < report[profile] <= 100
    assert report["windows"] == sum(len(w) for w in keep.values())
    assert len(list((out / "nab").glob("*.png"))) == 1
    # the agent's detector with its adaptive threshold, settings chosen by a recorded procedure
    assert report["detector"]["adaptation"]["threshold"] is True
    assert report["selection"]["recorded"]["chosen"]["threshold_factor"] == (
        report["detector"]["adaptation"]["threshold_factor"]
    )
    assert all(f["probationary_rows"] == 604 for f in report["per_file"])  # 15 % of 4,032
