"""``simulator``: the end-to-end demo, scenario runs, and evaluation on benchmark data.

    simulator demo --devices 10 --duration 60
    simulator run simulator/scenarios/chaos.toml
    simulator evaluate --dataset skab --data ../shared/data/skab
    simulator broker --port 0               # the tests' harness broker, in the foreground
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="broker + hub + N agents: train, roll out, inject, score")
    d.add_argument("--devices", type=int, default=10, help="simulated devices (default 10)")
    d.add_argument("--duration", type=float, default=60.0,
                   help="seconds of fault injection (default 60)")
    d.add_argument("--rate", type=float, default=10.0, help="readings per second per device")
    d.add_argument("--history", type=float, default=120.0,
                   help="seconds of normal operation each device recorded before it connected")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", type=Path, default=Path("reports/demo"), help="report directory")
    d.add_argument("--spec", help="TrainingSpec fields as JSON, merged over the demo's")
    d.add_argument("--keep-workdir", action="store_true",
                   help="keep the broker/hub/agent state directory for inspection")

    r = sub.add_parser("run", help="run a scenario file (TOML) and write its report")
    r.add_argument("scenario", type=Path)
    r.add_argument("--out", type=Path, help="report directory (default reports/<scenario name>)")

    b = sub.add_parser("broker", help="the tests' harness mosquitto in the foreground (secure: "
                                      "its own CA and credentials); refuses a taken port. "
                                      "By hand, use cloud-hub broker init/run")
    b.add_argument("--port", type=int, default=1883,
                   help="port on 127.0.0.1 (default 1883; 0: any free port, printed)")

    e = sub.add_parser("evaluate", add_help=False,
                       help="detection quality on SKAB / NAB (see simulator evaluate --help)")
    e.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "evaluate":
        # Delegated untouched: ``simulator.evaluate`` owns its own arguments.
        from simulator.evaluate import main as evaluate_main

        return int(evaluate_main(args_list[1:]))
    args = build_parser().parse_args(args_list)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        return _demo(args)
    if args.command == "run":
        return _run(args)
    if args.command == "broker":
        from simulator.broker_run import run_broker

        return run_broker(args.port)
    return 2


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from simulator.demo import DemoOptions, run_demo
    from simulator.hub_process import HubProcessError
    from simulator.loop import LoopError

    console = Console()
    try:
        opts = DemoOptions(devices=args.devices, duration_s=args.duration, rate_hz=args.rate,
                           history_s=args.history, seed=args.seed, out_dir=args.out,
                           keep_workdir=args.keep_workdir)
        if args.spec:
            opts.spec = {**opts.spec, **json.loads(args.spec)}
        report = run_demo(opts, console)
    except (ValueError, LoopError, HubProcessError) as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    _print_summary(console, report)
    return 0 if all(report["bars"].values()) else 3


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from simulator.hub_process import HubProcessError
    from simulator.loop import LoopError
    from simulator.scenario import ScenarioError, load_scenario, run_scenario

    console = Console()
    if _is_attacks(args.scenario):
        return _run_attacks(args, console)
    if _kind(args.scenario) == "drift":
        return _run_drift(args, console)
    try:
        scenario = load_scenario(args.scenario)
        report = run_scenario(scenario, console, out_dir=args.out)
    except (ScenarioError, LoopError, HubProcessError) as exc:
        console.print(f"[red]scenario failed:[/] {exc}")
        return 1
    _print_summary(console, report)
    return 0


def _is_attacks(path: Path) -> bool:
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8")).get("kind") == "attacks"
    except (OSError, tomllib.TOMLDecodeError):
        return False  # load_scenario names the problem


def _kind(path: Path) -> str | None:
    import tomllib

    try:
        kind = tomllib.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, tomllib.TOMLDecodeError):
        return None  # load_scenario names the problem
    return kind if isinstance(kind, str) else None


def _run_drift(args: argparse.Namespace, console: object) -> int:
    from rich.console import Console

    from cloud_hub.cli.client import ApiError
    from simulator.drift_scenario import load_drift_scenario, run_drift_scenario
    from simulator.hub_process import HubProcessError
    from simulator.loop import LoopError

    assert isinstance(console, Console)
    try:
        report = run_drift_scenario(load_drift_scenario(args.scenario), console,
                                    out_dir=args.out)
    except (ValueError, LoopError, HubProcessError, ApiError) as exc:
        console.print(f"[red]scenario failed:[/] {exc}")
        return 1
    keys = ("false_alarm_rate_before", "false_alarm_rate_during_drift",
            "false_alarm_rate_after", "drift_detected_seconds", "false_drift_devices",
            "retrain_triggered", "seconds_to_recover", "faults_detected", "faults_injected",
            "faults_detected_during_retraining", "faults_during_retraining", "bars")
    for key in keys:
        console.print(f"{key:<36} {report.get(key)}")
    return 0 if all(report["bars"].values()) else 3


def _run_attacks(args: argparse.Namespace, console: object) -> int:
    from rich.console import Console

    from cloud_hub.cli.client import ApiError
    from simulator.attacks import load_attack_scenario, print_attack_summary, run_attacks
    from simulator.hub_process import HubProcessError
    from simulator.loop import LoopError

    assert isinstance(console, Console)
    try:
        report = run_attacks(load_attack_scenario(args.scenario), console, out_dir=args.out)
    except (ValueError, LoopError, HubProcessError, ApiError) as exc:
        console.print(f"[red]scenario failed:[/] {exc}")
        return 1
    print_attack_summary(console, report)
    return 0 if report["all_refused"] and report["readings_lost"] == 0 else 3


def _print_summary(console: object, report: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    assert isinstance(console, Console)
    table = Table(title=str(report.get("title", "edgeloop run")))
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("bar")
    bars = report.get("bars") or {}
    assert isinstance(bars, dict)
    model = report.get("model") or {}
    rollout = report.get("rollout") or {}
    latency = report.get("detection_latency_ms") or {}
    assert isinstance(model, dict) and isinstance(rollout, dict) and isinstance(latency, dict)

    def mark(key: str) -> str:
        if key not in bars:
            return ""
        return "[green]met[/]" if bars[key] else "[red]not met[/]"

    rows = [
        ("devices", report.get("devices"), ""),
        ("readings generated", report.get("samples_generated"), ""),
        ("readings stored", report.get("telemetry_readings_stored"), ""),
        ("readings lost", report.get("telemetry_lost"), mark("telemetry_lost")),
        ("faults injected / detected",
         f"{report.get('faults_injected')} / {report.get('faults_detected')}", ""),
        ("false alarms", report.get("false_alarms"), ""),
        ("precision", report.get("precision"), mark("precision")),
        ("recall", report.get("recall"), mark("recall")),
        ("F1", report.get("f1"), ""),
        ("latency p50 / p95 / max (ms)",
         f"{latency.get('p50')} / {latency.get('p95')} / {latency.get('max')}", ""),
        ("model", f"{model.get('name')} v{model.get('version')} {model.get('quantization')}",
         mark("model.quantization")),
        ("size / float size (B)", f"{model.get('size_bytes')} / {model.get('float_size_bytes')}",
         mark("model.size_bytes")),
        ("parity", model.get("parity"), mark("model.parity")),
        ("devices updated", rollout.get("devices_updated"), mark("rollout.devices_updated")),
        ("seconds to full rollout", rollout.get("seconds_to_full"), ""),
    ]
    for name, value, bar in rows:
        table.add_row(name, str(value), bar)
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
