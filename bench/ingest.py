"""Ingest benchmark (issue 15): how many telemetry messages one hub process stores per second.

The real path, end to end: a private mosquitto (the harness's, simulator/broker.py, secure),
light publisher processes offering valid QoS 1 telemetry (simulator/flood.py, a few % of a core
per 1,000 msg/s, so the hub gets the machine), ``cloud-hub serve`` as a child process, and the
database (SQLite in the hub's data dir, or PostgreSQL at 127.0.0.1:5432 in a database created
for the run and dropped after). For each database and batch size (readings per message):

- the hub's capacity: the publishers' rate is steered to hold the hub's backlog (acknowledged
  by the broker, not yet stored) near a target (~64 MiB of messages), so the hub never waits
  for work and the broker's queue never overflows. The first ``--settle`` seconds are not
  measured (a hub on a fresh virtual machine runs faster in its first minute than after, and
  a ramp that starts then finds a saturation rate the hub no longer keeps). Over the window:
  ``messages_per_s`` / ``readings_per_s`` stored (the hub's own counters), the hub's CPU and
  messages per CPU-second, the publishers' CPU per message, the broker's CPU, peak RSS of hub
  and broker;
- then it stops the load, waits for the hub to store everything the broker acknowledged, and
  counts in the database: ``lost`` (acknowledged, never stored) and ``duplicates`` (device
  counters or rows above the unique messages sent). A broker that drops messages for the hub
  (its log says so) and any publisher error fail the case (``ok`` NO, exit status 1).

At batch 10 it also finds the saturation rate: a ramp of paced runs around the held rate, each
``--saturation-window`` long, keeping up when the backlog's least-squares slope is under 2% of
the offered rate, then bisection until the rate that fell behind is within 3% above it. It
then offers twice that for ``--overload`` seconds, ``--overload-runs`` times (3), each
drained before the next: ``overload_stored_ratio`` = the stored rate during the overload / the
saturation rate, of the median run (``overload_stored_ratios``: every run's, per database;
one run's moved by up to 0.18 with the same code on these machines), with
``overload_offered_ratio`` (what the broker acknowledged from the publishers meanwhile, the
same way; about 2), the hub's peak RSS, and what is lost once the load ends. On
PostgreSQL it runs two hubs in a ``$share`` group: ``two_hub_scaling`` (their stored rate
against one hub's), ``two_hub_per_cpu_s_ratio`` (their work per hub CPU-second against one
hub's: about 1 when they take nothing from each other) and ``two_hub_machine_busy_cores``
(one hub, two hubs: the cores a second hub could use). The machine is shared: the load
average is recorded with every phase, and the per-CPU-second figures are the ones to compare
between runs. Writes reports/bench/ingest.json and prints a table.

    .venv/bin/python bench/ingest.py                     # the full run (about 27 minutes)
    .venv/bin/python bench/ingest.py --duration 8 --settle 0 --quick   # a quick look
    .venv/bin/python bench/ingest.py --quick --encoding msgpack   # telemetry in MessagePack
    # a fleet's shape: 10,000 devices, each in about one message of a batch (not four)
    .venv/bin/python bench/ingest.py --quick --databases postgresql --batches 10 --devices 10000
    # the overload phase alone, at 2 x 4,000 msg/s for 60 s once, after a 10-s held flood:
    .venv/bin/python bench/ingest.py --databases sqlite --batches 10 --duration 10 --settle 0 \
        --saturation-rate 4000 --overload 60 --overload-runs 1 --skip-two-hubs --skip-rollups
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from simulator.ingest_bench.cases import run_case, run_two_hubs  # noqa: E402
from simulator.ingest_bench.machine import load_average  # noqa: E402
from simulator.ingest_bench.report import print_table, summarize  # noqa: E402
from simulator.ingest_bench.rollups import measure_rollup_query  # noqa: E402

# The command line alone. The bench's parts are in simulator/ingest_bench/, one name each for
# this script, the tests and mypy (a module beside this one is `x` to mypy and to a script run
# from here, `bench.x` to the tests).


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0, help="measured window of each run (s)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--settle", type=float, default=60.0,
                   help="seconds of held flood before a hub's first measured window, not "
                        "counted: on a virtual machine the hub stored 10-15%% more per "
                        "CPU-second in its first minute than after (docs/scaling.md)")
    p.add_argument("--overload", type=float, default=60.0, help="seconds at 2x saturation")
    p.add_argument("--overload-runs", type=int, default=3,
                   help="overloads one after the other on each database; the median run's "
                        "stored ratio is overload_stored_ratio (one run's moved by up to 0.18 "
                        "on these machines with the same code)")
    p.add_argument("--saturation-steps", type=int, default=4)
    p.add_argument("--saturation-resolution", type=float, default=0.03,
                   help="refine the saturation rate until the lowest rate that fell behind is "
                        "within this fraction above it")
    p.add_argument("--saturation-bisections", type=int, default=3,
                   help="at most this many paced runs to refine it (0: the 10%% ramp alone)")
    p.add_argument("--saturation-window", type=float, default=30.0,
                   help="measured window of each paced run of the saturation ramp (s)")
    p.add_argument("--saturation-rate", type=float, default=None,
                   help="skip the ramp and take this as the saturation rate (msg/s): the "
                        "overload phase alone, at twice it (e.g. old and new code compared "
                        "at one offered rate)")
    p.add_argument("--skip-two-hubs", action="store_true",
                   help="no two-hub run on PostgreSQL")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument("--batches", default="10,100")
    p.add_argument("--devices", type=int, default=None,
                   help="devices the load is spread over (default: 100 on SQLite, 1,000 on "
                        "PostgreSQL and for two hubs); each device costs the hub a watermark "
                        "and a counter per batch it is in, and an acknowledgement a second")
    p.add_argument("--encoding", choices=("json", "msgpack"), default="json",
                   help="how the publishers encode telemetry (shared/packed.py)")
    p.add_argument("--quick", action="store_true",
                   help="no saturation/overload and no two-hub run")
    p.add_argument("--skip-rollups", action="store_true",
                   help="do not measure rollup_query_ms (its data takes minutes to generate)")
    p.add_argument("--pin-hub", action="store_true",
                   help="a diagnostic, not the issue's method: the hub alone on the first CPU, "
                        "and the broker, the publishers and the bench on the others, as when "
                        "the broker and the devices are other machines. PostgreSQL's server "
                        "is not the bench's and is not moved: use with --databases sqlite")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "ingest.json")
    args = p.parse_args()
    args.hub_cpus = None
    if args.pin_hub:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            p.error("--pin-hub needs at least 2 CPUs")
        args.hub_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))  # the broker and the publishers inherit it
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=170)
    load_before = load_average()
    started = time.time()
    cases = []
    for db_kind in args.databases.split(","):
        for readings in (int(b) for b in args.batches.split(",")):
            devices = args.devices or (100 if db_kind == "sqlite" else 1000)
            cases.append(run_case(db_kind, readings, devices, args, console,
                                  saturation=not args.quick and readings == 10))
    two_hubs = None
    if not args.quick and not args.skip_two_hubs and "postgresql" in args.databases:
        two_hubs = run_two_hubs(10, args.devices or 1000, args, console)
    rollup_ms = None
    if "postgresql" in args.databases and not args.skip_rollups:
        rollup_ms = measure_rollup_query(console, devices=100, days=30)
    result = summarize(cases, two_hubs, rollup_ms)
    result.update(load_average_before=load_before, load_average_after=load_average(),
                  cpu_count=os.cpu_count(), seconds=round(time.time() - started),
                  duration_s=args.duration, settle_s=args.settle, overload_s=args.overload,
                  publishers=args.publishers, encoding=args.encoding,
                  hub_cpus=sorted(args.hub_cpus) if args.hub_cpus else None, cases=cases,
                  two_hubs=two_hubs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(console, result)
    console.print(f"written {args.out}")
    if not result["ok"]:
        console.print("[bold red]NOT OK: something acknowledged by the broker was lost or "
                      "stored twice, the broker dropped messages for the hub, or a publisher "
                      "failed (see the ok column and the lines above)[/]")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
