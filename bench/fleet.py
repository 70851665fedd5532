"""Fleet benchmark (issue 6): 1,000 devices at 1 Hz × 8 channels against a real hub for 60 s.

Each device is the agent's own core (``simulator.scale_device``: its own TLS connection and
credential, durable SQLite outbox, model store and trust ring); the fleet is split over
``--processes`` processes (default: one per core, ``simulator.fleet_pool``), each driving its
share through epoll with ``--shards`` threads; the bench merges what they report. The hub
(``cloud-hub serve``, a child process) trains a model on part of the fleet's recorded history,
publishes it and rolls it out through the real update path (desired, retained manifest and
chunks, signature, shadow, swap, reported); faults are injected on a tenth of the devices.
Prints a table and writes
``reports/bench/fleet.json`` with devices, readings_generated, readings_stored, lost,
anomalies_raised, anomalies_stored, detection_latency_ms_p99 (window completion to hub commit),
where that time went per stage (``detection_latency_stages_ms``: the window's last reading due
-> read by its device -> detected -> handed to paho -> written to the socket -> delivered by
the broker to a bystander subscriber, ``simulator.anomaly_watch`` -> the hub's stored_at,
stamped as the last statement before the ingest transaction's commit), the tick lag of the
fleet's shards (how late a device was ticked after it was due: p50, p99, max), the
CPU time each process used, and what the hub's delivery acknowledgements cost (acks published
per second and their bytes, from the hub's /metrics; how many the devices received).

    .venv/bin/python bench/fleet.py [--devices 1000] [--duration 60] [--processes N]

Exits 1 when a reading was lost (or the outboxes did not drain at stop).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from simulator.fleet_pool import default_processes  # noqa: E402
from simulator.scale import ScaleOptions, run_scale  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--processes", type=int, default=default_processes(),
                   help="fleet processes (default: one per core)")
    p.add_argument("--shards", type=int, default=1, help="shard threads per fleet process")
    p.add_argument("--update-steps-per-round", type=int, default=None,
                   help="model-update steps (signature checks, stagings) a shard runs per round "
                        "during the rollout (0: no bound; default: simulator.scale_fleet's)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "fleet.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    result = run_scale(ScaleOptions(devices=args.devices, duration_s=args.duration,
                                    rate_hz=args.rate, processes=args.processes,
                                    shards=args.shards,
                                    update_steps_per_round=args.update_steps_per_round),
                       console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"fleet: {result['devices']} devices × {result['rate_hz']:g} Hz × "
                        f"{result['channels']} channels, {result['duration_s']:g} s")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("readings_generated", "readings_stored", "lost", "anomalies_raised",
                "anomalies_stored", "detection_latency_ms_p99", "faults_injected",
                "faults_detected", "false_alarms", "fleet_processes", "cpu_time_s",
                "fleet_process_cpu_s", "cpu_cores_used", "tick_lag_ms", "max_tick_lag_s",
                "outboxes_drained_at_stop", "drops", "reconnects", "rollout",
                "hub_stored_at", "load_average"):
        table.add_row(key, str(result[key]))
    console.print(table)
    stages = Table(title="window-to-hub (window's last reading due on the device -> the hub's "
                         "commit of the anomaly), ms, true detections")
    for col in ("stage", "n", "p50", "p95", "p99", "max"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    total = result["detection_latency_ms"]["window_end_to_commit"]
    for name, row in [*result["detection_latency_stages_ms"].items(),
                      ("window_end_to_hub_stored (total)", total)]:
        stages.add_row(name, *(str(row.get(k)) for k in ("n", "p50", "p95", "p99", "max")))
    console.print(stages)
    acks = Table(title="delivery acknowledgements (hub -> devices) over the measured period")
    acks.add_column("measure")
    acks.add_column("value", justify="right")
    for key, value in result["acks"].items():
        acks.add_row(key, str(value))
    console.print(acks)
    console.print(f"written {args.out}")
    if result["lost"] != 0 or not result["outboxes_drained_at_stop"]:
        console.print(f"[red]FAILED[/]: {result['lost']} readings lost, outboxes drained: "
                      f"{result['outboxes_drained_at_stop']}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
