"""Training + conversion + parity time of the default model (issue 5 bar: 10,000 windows ≤ 60 s).

Simulated pump readings from ``simulator.signals``, split over devices like fleet telemetry, go
through ``run_training`` with the default ``TrainingSpec`` (dense AE, int8). Prints a table and
writes ``reports/bench/train.json`` (``train_convert_seconds`` is the issue's figure).

    .venv/bin/python bench/train.py [--windows 10000] [--devices 10] [--family dense_ae]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud_hub.training.artifact import TrainingSpec  # noqa: E402
from cloud_hub.training.pipeline import run_training  # noqa: E402
from simulator.signals import SignalGenerator  # noqa: E402


def fleet_readings(devices: int, rows: int) -> tuple[np.ndarray, list[str], list[int]]:
    blocks = [SignalGenerator("pump", seed=i, rate_hz=1.0).generate(rows) for i in range(devices)]
    channels = SignalGenerator("pump").channels
    return np.concatenate([b.values for b in blocks]), channels, [rows] * devices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=10_000, help="training windows wanted")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--family", default="dense_ae")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "train.json")
    args = parser.parse_args(argv)

    spec = TrainingSpec(family=args.family, max_train_windows=max(args.windows, 64))
    # rows per device so that the training part (1 - validation_fraction) yields the windows
    per_device = args.windows // args.devices + spec.window - 1
    rows = int(np.ceil(per_device / (1.0 - spec.validation_fraction)))
    readings, channels, segments = fleet_readings(args.devices, rows)

    stages: dict[str, float] = {}
    started = time.perf_counter()

    def on_progress(update: object) -> None:
        stage = getattr(update, "stage", "")
        stages.setdefault(stage, time.perf_counter() - started)
        if stage == "fitting" and getattr(update, "epoch", 0):
            print(f"\r  epoch {update.epoch}/{update.epochs} loss {update.loss:.4f}", end="")  # type: ignore[attr-defined]

    artifact = run_training(readings, channels, spec, segments=segments, progress=on_progress)
    total = time.perf_counter() - started
    print()
    p = artifact.parity
    result = {
        "train_convert_seconds": round(total, 2),
        "fit_seconds": round(stages.get("thresholding", total) - stages.get("fitting", 0.0), 2),
        "convert_parity_seconds": round(total - stages.get("converting", total), 2),
        "family": spec.family,
        "quantization": p.quantization.value,
        "devices": args.devices,
        "readings": int(len(readings)),
        "training_windows": artifact.training_windows,
        "validation_windows": p.windows,
        "epochs": spec.epochs,
        "parity": p.decision_agreement,
        "parity_passed": p.passed,
        "score_correlation": p.score_correlation,
        "size_bytes": p.size_bytes,
        "float_size_bytes": p.float_size_bytes,
        "us_per_window": round(p.us_per_window, 2),
        "runtime": p.runtime,
        "threshold_method": artifact.threshold_method,
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
