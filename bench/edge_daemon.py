"""Edge daemon benchmark (issue 4): what a running agent costs and how it recovers.

1. ``rss_bytes`` and ``cpu_percent`` of a real ``edge-agent run`` process reading SKAB's
   anomaly-free pump data at 10 Hz × 8 channels (CSV replay at 10× its 1 Hz) while an int8
   dense autoencoder (32 readings × 8 channels, converted by the hub's converter) scores every
   window. TensorFlow builds that model here, in the benchmark process; the agent process never
   imports it. The agent runs ``--agent-runs`` times; RSS is the maximum over the runs, sampled
   once the agent has released its start-up pages, with PSS, private and anonymous memory, the
   largest mappings and the threads (see ``simulator/edge_bench/agent_memory.py``).
2. ``replay_readings_per_s``: an outbox holding a long outage's telemetry (batches of 100
   readings × 8 channels) is drained through the agent's link and sender after the reconnect,
   until the last PUBACK.
3. ``reconnect_spread_s``: 200 agent links (the agent's ``MqttLink``, in one process) on one
   broker; the broker restarts; how far apart their reconnects land, against the configured
   back-off window.

Prints a table and writes ``reports/bench/edge_daemon.json``.

    .venv/bin/python bench/edge_daemon.py [--cpu-seconds 20] [--replay-readings 200000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.edge_bench.agent_memory import format_import_costs  # noqa: E402
from simulator.edge_bench.daemon_agent import measure_daemon  # noqa: E402
from simulator.edge_bench.link_recovery import (  # noqa: E402
    measure_reconnect_spread,
    measure_replay,
)
from simulator.edge_bench.skab_model import SKAB_FREE  # noqa: E402

# The command line and the report. The bench's parts are in simulator/edge_bench/, one name
# each for this script, the tests and mypy (a module beside this one is `x` to mypy and to a
# script run from here, `bench.x` to the tests).


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-seconds", type=float, default=20.0)
    parser.add_argument("--agent-runs", type=int, default=3, help="agent processes measured")
    parser.add_argument("--skab-free", type=Path, default=SKAB_FREE,
                        help="SKAB's anomaly-free CSV (default: beside the repository)")
    parser.add_argument("--replay-readings", type=int, default=200_000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--backoff-window", type=float, default=5.0)
    parser.add_argument("--backoff-max", type=float, default=30.0)
    parser.add_argument("--legacy-agent", type=Path, default=ROOT / ".venv-edge" / "bin" /
                        "edge-agent", help="also measure this edge-agent (tflite-runtime venv)")
    args = parser.parse_args()
    if not args.skab_free.exists():
        raise SystemExit(f"SKAB data not found at {args.skab_free} (use --skab-free)")
    logging.basicConfig(level=logging.ERROR)  # 200 links losing their broker on purpose
    results: dict[str, Any] = {}
    print("measuring the agent process at 10 Hz x 8 channels ...", flush=True)
    results.update(measure_daemon(args.cpu_seconds, Path(sys.executable).parent / "edge-agent",
                                  args.agent_runs, args.skab_free))
    if args.legacy_agent.exists():
        print(f"... and again with {args.legacy_agent} ...", flush=True)
        legacy = measure_daemon(args.cpu_seconds, args.legacy_agent, args.agent_runs,
                                args.skab_free)
        results["legacy_runtime_rss_bytes"] = legacy["rss_bytes"]
        results["legacy_runtime_pss_mb"] = legacy["pss_mb"]
        results["legacy_runtime_anonymous_mb"] = legacy["anonymous_mb"]
        results["legacy_runtime_cpu_percent"] = legacy["cpu_percent"]
        results["legacy_runtime"] = legacy["runtime"]
    print("measuring outbox replay after a reconnect ...", flush=True)
    results.update(measure_replay(args.replay_readings))
    print(f"measuring reconnects of {args.agents} links after a broker restart ...", flush=True)
    results.update(measure_reconnect_spread(args.agents, args.backoff_window, args.backoff_max))
    bars = {
        "rss_bytes": (results["rss_bytes"], "<= 50,000,000 (max)",
                      results["rss_bytes"] <= 50_000_000),
        "cpu_percent": (results["cpu_percent"], "<= 5 %", results["cpu_percent"] <= 5.0),
        "replay_readings_per_s": (results["replay_readings_per_s"], ">= 20,000",
                                  results["replay_readings_per_s"] >= 20_000),
        "reconnect_spread_s": (results["reconnect_spread_s"],
                               # n uniform draws span about (n-1)/(n+1) of the window
                               f">= 0.8 x {args.backoff_window} s",
                               results["reconnect_spread_s"] >= 0.8 * args.backoff_window),
    }
    print(f"\n{'figure':<28}{'measured':>16}  {'bar':<18}ok")
    for name, (value, bar, ok) in bars.items():
        print(f"{name:<28}{value:>16,}  {bar:<18}{'yes' if ok else 'NO'}")
    for name, value in results.items():
        if name not in bars and name != "import_costs":
            print(f"  {name:<26}{value}")
    print("\n" + format_import_costs(results["import_costs"]))
    print("\nTimings and RSS are noisy on a shared machine: quote them with the load average "
          f"(now {os.getloadavg()[0]:.1f}) and take the final figures on a quiet machine.")
    out = ROOT / "reports" / "bench" / "edge_daemon.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
