"""One case of the ingest bench, on its own broker, hubs and database: one hub at one batch
size (at batch 10 with the saturation search and the overload), or two hubs on PostgreSQL;
then what the database holds against what the broker acknowledged."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import create_engine, text

from simulator.bench_database import Database, database
from simulator.broker import Broker
from simulator.flood import FloodPlan
from simulator.ingest_bench.hubs import Hubs, database_url, enroll
from simulator.ingest_bench.measured_run import held_backlog, measure
from simulator.ingest_bench.saturation import find_saturation, overloads

__all__ = ["case_ok", "check_counts", "count_in_database", "run_case", "run_two_hubs"]


@dataclass
class _Setup:
    """A case's broker, database and hubs, the flood's plan and its held-backlog run."""

    broker: Broker
    db: Database
    hubs: Hubs
    plan: FloodPlan
    flood: dict[str, Any]
    hub_log_warnings: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _held_flood(db_kind: str, readings: int, devices: int, opts: argparse.Namespace,
                console: Console, *, hubs: int = 1, label: str) -> Iterator[_Setup]:
    """A private broker, a database made for the case and ``hubs`` hubs, the flood's devices
    enrolled, and the held-backlog run measured. When the block ends the hubs stop and their
    warnings go to ``hub_log_warnings``."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ingest-") as tmp:
        work = Path(tmp)
        with Broker(workdir=work / "broker") as broker, database(db_kind) as db:
            running = Hubs(broker, db, work, count=hubs, cpus=opts.hub_cpus).start()
            warnings: dict[str, Any] = {}
            try:
                plan = FloodPlan(devices=devices, readings=readings, rate=0.0,
                                 processes=opts.publishers, encoding=opts.encoding)
                enroll(database_url(running, db), plan.device_ids())
                held = held_backlog(readings)
                console.print(f"{label}, batch {readings}: backlog held at {held.target:,} "
                              f"messages for {opts.duration:g} s")
                flood = measure(broker, running, plan, warmup_s=opts.warmup + opts.settle,
                                window_s=opts.duration, held=held)
                setup = _Setup(broker, db, running, plan, flood, warnings)
                yield setup
            finally:
                running.stop()
                warnings.update(running.log_warnings())


def run_case(db_kind: str, readings: int, devices: int, opts: argparse.Namespace,
             console: Console, *, saturation: bool) -> dict[str, Any]:
    """One database x batch size: the hub's capacity with a held backlog; at batch 10 also
    saturation and overload. Everything the broker acknowledged is counted in the database."""
    with _held_flood(db_kind, readings, devices, opts, console, label=db_kind) as setup:
        broker, hubs, plan, flood = setup.broker, setup.hubs, setup.plan, setup.flood
        published = flood["published"]
        phases = [flood]
        case: dict[str, Any] = {"database": db_kind, "readings_per_message": readings,
                                "devices": devices, "flood": flood}
        if saturation:
            steps: list[dict[str, Any]] = []
            if opts.saturation_rate:  # given: the overload alone, at twice it
                sat = opts.saturation_rate
            else:
                sat, steps = find_saturation(broker, hubs, plan, flood, opts, console)
            case["saturation_rate"] = sat
            case["saturation_steps"] = steps
            published += sum(s["published"] for s in steps)
            phases += steps
            over, others = overloads(broker, hubs, plan, saturation_rate=sat, flood=flood,
                                     steps=steps, opts=opts, console=console, label=db_kind)
            published += over["published"] + sum(o["published"] for o in others)
            phases += [over, *others]
            case["overload"] = over  # the median run
            case["overload_other_runs"] = others
        counts = check_counts(hubs, setup.db, published, published * readings)
        case.update(counts)
        case["broker_drop_log_lines"] = sum(p["broker_drop_log_lines"] for p in phases)
        case["publisher_errors"] = [e for p in phases for e in p["publisher_errors"]]
        if saturation:
            case["overload"]["lost"] = counts["lost"]
            case["overload"]["hub_missing_batches"] = hubs.missing_batches()
    case["hub_log_warnings"] = setup.hub_log_warnings
    case["ok"] = case_ok(case)
    return case


def run_two_hubs(readings: int, devices: int, opts: argparse.Namespace,
                 console: Console) -> dict[str, Any]:
    """Two hubs in one ``$share`` group on PostgreSQL, with a held backlog: their stored rate
    and CPU, counted in the database as for one hub."""
    with _held_flood("postgresql", readings, devices, opts, console, hubs=2,
                     label="postgresql, two hubs") as setup:
        flood = setup.flood
        counts = check_counts(setup.hubs, setup.db, flood["published"],
                              flood["published"] * readings)
    case = {"database": "postgresql", "hubs": 2, "readings_per_message": readings,
            "devices": devices, "flood": flood, **counts,
            "hub_log_warnings": setup.hub_log_warnings,
            "broker_drop_log_lines": flood["broker_drop_log_lines"],
            "publisher_errors": flood["publisher_errors"]}
    case["ok"] = case_ok(case)
    return case


def count_in_database(hubs: Hubs, db: Database) -> dict[str, int]:
    engine = create_engine(database_url(hubs, db))
    try:
        with engine.connect() as conn:
            # One statement, so one snapshot: the rows and the devices' counters as of one
            # moment, even if a hub still commits (two statements could fall either side of
            # a commit and show rows missing that its counters already count).
            rows, readings, batches_counted, readings_counted, dead = conn.execute(text(
                "SELECT (SELECT count(*) FROM telemetry), "
                "(SELECT coalesce(sum(readings), 0) FROM telemetry), "
                "(SELECT coalesce(sum(telemetry_batches), 0) FROM devices), "
                "(SELECT coalesce(sum(telemetry_readings), 0) FROM devices), "
                "(SELECT count(*) FROM dead_letters)")).one()
    finally:
        engine.dispose()
    return {"rows": int(rows), "readings": int(readings), "device_batches": int(batches_counted),
            "device_readings": int(readings_counted), "dead_letters": int(dead)}


def check_counts(hubs: Hubs, db: Database, published: int, readings: int) -> dict[str, int]:
    """lost and duplicates, counted in the database against what the broker acknowledged."""
    counts = count_in_database(hubs, db)
    return {
        "lost": max(0, published - counts["rows"]),
        "duplicates": max(0, counts["rows"] - published)
        + max(0, counts["device_batches"] - counts["rows"])
        + max(0, counts["device_readings"] - counts["readings"]),
        "rows": counts["rows"], "dead_letters": counts["dead_letters"],
        "readings_stored": counts["readings"], "readings_published": readings,
    }


def case_ok(case: dict[str, Any]) -> bool:
    """Nothing lost, nothing stored twice, no drop logged by the broker, no publisher error."""
    return (case["lost"] == 0 and case["duplicates"] == 0
            and case.get("broker_drop_log_lines", 0) == 0 and not case.get("publisher_errors"))
