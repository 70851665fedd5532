"""``simulator evaluate``: detection quality on SKAB or NAB through the device's TFLite path.

    simulator evaluate --dataset skab --data ../shared/data/skab
    simulator evaluate --dataset nab --data ../shared/data/nab

Prints the pooled result placed among the published results, per-file results, writes
``<out>/<dataset>.json`` and plots under ``<out>/<dataset>/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.manifest import Quantization

__all__ = ["main"]

log = logging.getLogger(__name__)

_OVERRIDES = (
    "family",
    "window",
    "latent",
    "hidden",
    "epochs",
    "smoothing",
    "threshold_quantile",
    "threshold_factor",
    "normalization",
    "representative_scale",
    "seed",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simulator evaluate",
        description="Score the edgeloop detector on SKAB or NAB, through int8 TFLite.",
    )
    p.add_argument(
        "--dataset",
        required=True,
        choices=["skab", "nab", "adaptation"],
        help="adaptation: the simulator's own slow faults and a benign seasonal change",
    )
    p.add_argument(
        "--data", type=Path, help="benchmark folder (e.g. ../shared/data/skab); skab and nab"
    )
    p.add_argument("--out", type=Path, default=Path("reports/eval"), help="report folder")
    p.add_argument(
        "--subset", action="append", help="SKAB folder(s) under --data (default: all labelled)"
    )
    p.add_argument(
        "--train-on",
        choices=["file", "anomaly-free"],
        default="file",
        help="SKAB: each file's first 400 rows (protocol) or anomaly-free.csv",
    )
    p.add_argument("--family", choices=["pca", "dense_ae", "conv1d_ae"])
    p.add_argument("--window", type=int)
    p.add_argument("--latent", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--smoothing", type=int, help="mean of the last n window scores")
    p.add_argument("--threshold-quantile", type=float)
    p.add_argument("--threshold-factor", type=float)
    p.add_argument("--normalization", choices=["zscore", "minmax"])
    p.add_argument(
        "--representative-scale",
        type=float,
        help="int8 calibration also sees training windows scaled by this",
    )
    p.add_argument("--quantization", choices=[q.value for q in Quantization])
    p.add_argument("--seed", type=int)
    p.add_argument("--cooldown", type=int, default=100, help="NAB: readings between detections")
    p.add_argument("--plots", type=int, default=4, help="per-file figures to draw (0: none)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of tables")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="adaptation: run the scenario this many times faster (quick checks)",
    )
    p.add_argument(
        "--select",
        action="store_true",
        help="first choose the settings by leave-one-file-out over a grid (slow), record it "
        "in <out>/<dataset>-selection.json and evaluate the chosen setting",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.dataset != "adaptation" and args.data is None:
        parser.error(f"--data is required with --dataset {args.dataset}")
    from simulator.evaluate.datasets import DatasetError

    try:
        return _run(args)
    except (DatasetError, ValueError) as exc:
        print(f"simulator evaluate: {exc}", file=sys.stderr)
        return 2


def _config(args: argparse.Namespace, base: Any) -> Any:
    changes = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    if args.quantization is not None:
        changes["quantization"] = Quantization(args.quantization)
    return dataclasses.replace(base, **changes)


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar over files (plain log lines when rich is missing or quiet)."""
    try:
        from rich.progress import Progress
    except ImportError:
        quiet = True
    if quiet:
        yield lambda i, n, name: log.info("%s %d/%d %s", label, i, n, name)
        return
    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(i: int, n: int, name: str) -> None:
            bar.update(task, total=n, completed=i, description=f"{label} {name}")

        yield update


def _run(args: argparse.Namespace) -> int:
    # Imported here: these pull in TensorFlow, which ``simulator --help`` should not pay for.
    from simulator.evaluate.choose import choose_nab, choose_skab, recorded_selection
    from simulator.evaluate.detector import DetectorConfig
    from simulator.evaluate.plots import plot_nab, plot_skab

    args.out.mkdir(parents=True, exist_ok=True)
    if args.dataset == "adaptation":
        return _run_adaptation(args)
    record_path = args.out / f"{args.dataset}-selection.json"
    selection: dict[str, Any]
    if args.dataset == "skab":
        from simulator.evaluate.skab import TRAIN_ROWS, SkabSetting, evaluate_skab

        skab_setting = SkabSetting(config=_config(args, DetectorConfig()))
        with _progress("SKAB", args.json) as progress:
            if args.select:
                skab_setting, selection = choose_skab(
                    args.data, skab_setting, subsets=args.subset, progress=progress
                )
                _write_record(record_path, selection, skab_setting.describe())
            else:
                selection = recorded_selection(record_path, skab_setting, "skab")
            result = evaluate_skab(
                args.data, skab_setting, subsets=args.subset, train_on=args.train_on,
                progress=progress,
            )
        result = dataclasses.replace(result, selection=selection)
        summary = result.summary()
        plots = plot_skab(result, args.out / "skab", files=args.plots, train_rows=TRAIN_ROWS)
    else:
        from simulator.evaluate.nab import DEFAULT_NAB_CONFIG, NabSetting, evaluate_nab

        nab_setting = NabSetting(config=_config(args, DEFAULT_NAB_CONFIG), cooldown=args.cooldown)
        with _progress("NAB", args.json) as progress:
            if args.select:
                nab_setting, selection = choose_nab(args.data, nab_setting, progress=progress)
                _write_record(record_path, selection, nab_setting.describe())
            else:
                selection = recorded_selection(record_path, nab_setting, "nab")
            nab = evaluate_nab(args.data, nab_setting, progress=progress)
        nab = dataclasses.replace(nab, selection=selection)
        summary = nab.summary()
        plots = plot_nab(nab, args.out / "nab", files=args.plots)
    summary["plots"] = [str(p) for p in plots]
    path = args.out / f"{args.dataset}.json"
    path.write_text(json.dumps(summary, indent=2, default=_plain) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2, default=_plain))
    elif args.dataset == "skab":
        _print_skab(summary)
    else:
        _print_nab(summary)
    if not args.json:
        print(f"\nwrote {path} and {len(plots)} plot(s) under {args.out / args.dataset}")
    return 0


def _run_adaptation(args: argparse.Namespace) -> int:
    from simulator.evaluate.adaptation import evaluate_adaptation

    with _progress("adaptation", args.json) as progress:
        report = evaluate_adaptation(speed=args.speed, progress=progress)
    path = args.out / "adaptation.json"
    path.write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    if args.json:
        print(json.dumps(report, indent=2, default=_plain))
        return 0
    print(f"adaptation: {report['setup']['profile']} at {report['setup']['rate_hz']} Hz, "
          f"{report['model']['quantization']} TFLite, agent detector")
    print(f"\n{'scenario':<14} {'adaptation':>10} {'events':>7} {'false':>6} {'caught':>7} "
          f"{'delay s':>8}")
    for r in report["scenarios"]:
        delay = r["detection_delay_s"][0] if r["detection_delay_s"] else None
        shown = "-" if delay is None else f"{delay:.0f}"
        caught = f"{r['faults_caught']}/{len(r['faults'])}"
        print(f"{r['scenario']:<14} {r['adaptation']:>10} {r['events']:>7} "
              f"{r['false_alarms']:>6} {caught:>7} {shown:>8}")
    print(f"\nwrote {path}")
    return 0


def _plain(value: Any) -> Any:
    """numpy scalars and enums in a report, as JSON."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_record(path: Path, selection: dict[str, Any], setting: dict[str, Any]) -> None:
    record = {**selection, "setting": json.loads(json.dumps(setting, default=_plain))}
    path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")


def _print_skab(s: dict[str, Any]) -> None:
    print(
        f"SKAB outlier problem: {s['files']} files, {s['rows']:,} test rows "
        f"({s['anomalous_rows']:,} anomalous), {s['quantization']} TFLite on {s['runtime']}"
    )
    print(f"\n{'detector':<34} {'F1':>6} {'FAR %':>7} {'MAR %':>7}")
    for row in s["leaderboard"]:
        mark = "  <- this run" if row["ours"] else ""
        print(
            f"{row['detector']:<34} {row['f1']:>6.3f} {row['far']:>7.2f} {row['mar']:>7.2f}{mark}"
        )
    print(
        f"{'(same model, float32 TFLite)':<34} {s['float_f1']:>6.3f} {s['float_far']:>7.2f} "
        f"{s['float_mar']:>7.2f}"
    )
    print("(published rows: all 34 SKAB files; this run: the files under --data)")
    if s.get("anomaly_free_far") is not None:
        print(f"anomaly-free.csv, same protocol: FAR {s['anomaly_free_far']:.2f} %")
    _print_selection(s.get("selection"))
    print(
        f"\n{'file':<14} {'rows':>5} {'F1':>6} {'FAR %':>7} {'MAR %':>7} "
        f"{'float F1':>9} {'agree':>6}"
    )
    for f in s["per_file"]:
        print(
            f"{f['file']:<14} {f['test_rows']:>5} {f['f1']:>6.3f} {f['far']:>7.2f} "
            f"{f['mar']:>7.2f} {f['float_f1']:>9.3f} {f['decision_agreement']:>6.3f}"
        )


def _print_nab(s: dict[str, Any]) -> None:
    print(f"NAB: {s['files']} files, {s['windows']} labelled windows, {s['quantization']} TFLite")
    print(f"\n{'profile':<15} {'score':>7} {'float':>7}")
    for name in ("standard", "reward_low_fp", "reward_low_fn"):
        print(f"{name:<15} {s[name]:>7.2f} {s['float'][name]:>7.2f}")
    _print_selection(s.get("selection"))
    print(
        "\npublished standard-profile scores (all 58 NAB files): "
        + ", ".join(f"{k} {v}" for k, v in s["published_standard"].items())
    )
    print(f"\n{'file':<56} {'win':>4} {'hit':>4} {'FP':>4} {'standard raw':>13}")
    for f in s["per_file"]:
        print(
            f"{f['file']:<56} {f['windows']:>4} {f['true_positives']:>4} "
            f"{f['false_positives']:>4} {f['standard_raw']:>13.3f}"
        )


def _print_selection(selection: dict[str, Any] | None) -> None:
    if not selection:
        return
    record = selection.get("record") or selection.get("recorded") or selection
    if "cross_validated" not in record:
        print(f"settings: {selection.get('how', '')}")
        return
    cv = ", ".join(f"{k} {v}" for k, v in record["cross_validated"].items())
    print(f"settings chosen by leave-one-file-out: {record['chosen']}; held-out scores: {cv}")
