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
    p.add_argument("--dataset", required=True, choices=["skab", "nab"])
    p.add_argument(
        "--data", required=True, type=Path, help="benchmark folder (e.g. ../shared/data/skab)"
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    from simulator.evaluate.detector import DetectorConfig
    from simulator.evaluate.plots import plot_nab, plot_skab

    args.out.mkdir(parents=True, exist_ok=True)
    if args.dataset == "skab":
        from simulator.evaluate.skab import TRAIN_ROWS, evaluate_skab

        config = _config(args, DetectorConfig())
        with _progress("SKAB", args.json) as progress:
            result = evaluate_skab(
                args.data, config, subsets=args.subset, train_on=args.train_on, progress=progress
            )
        summary = result.summary()
        plots = plot_skab(result, args.out / "skab", files=args.plots, train_rows=TRAIN_ROWS)
    else:
        from simulator.evaluate.nab import DEFAULT_NAB_CONFIG, NabSetting, evaluate_nab

        setting = NabSetting(config=_config(args, DEFAULT_NAB_CONFIG), cooldown=args.cooldown)
        with _progress("NAB", args.json) as progress:
            nab = evaluate_nab(args.data, setting, progress=progress)
        summary = nab.summary()
        plots = plot_nab(nab, args.out / "nab", files=args.plots)
    summary["plots"] = [str(p) for p in plots]
    path = args.out / f"{args.dataset}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
    elif args.dataset == "skab":
        _print_skab(summary)
    else:
        _print_nab(summary)
    if not args.json:
        print(f"\nwrote {path} and {len(plots)} plot(s) under {args.out / args.dataset}")
    return 0


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
        f"{'(same model, float Keras)':<34} {s['float_f1']:>6.3f} {s['float_far']:>7.2f} "
        f"{s['float_mar']:>7.2f}"
    )
    print("(published rows: all 34 SKAB files; this run: the files under --data)")
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
