"""Ingest benchmark (issue 15): how many telemetry messages one hub process stores per second.

The real path, end to end: a private mosquitto (the harness's, simulator/broker.py), publisher
processes flooding valid QoS 1 telemetry (simulator/flood.py), ``cloud-hub serve`` as a child
process, and the database (SQLite in the hub's data dir, or PostgreSQL at 127.0.0.1:5432 in a
database created for the run and dropped after). For each database and batch size (readings per
message) it measures, over a window after a warm-up:

- ``messages_per_s`` / ``readings_per_s`` stored (from the hub's own counters), the hub's CPU
  (share of one core) and the messages it stores per CPU-second, its peak RSS;
- then stops the load, waits for the hub to drain the broker's queue, and counts in the
  database: ``lost`` (acknowledged by the broker, never stored) and ``duplicates`` (device
  counters or rows above the unique messages sent).

At batch 10 it also finds the saturation rate (the highest offered rate whose backlog does not
grow, from a flood then paced runs), offers twice that for ``--overload`` seconds
(``overload_stored_ratio`` = stored rate / saturation, the hub's peak RSS, and what is lost once
the load ends), and on PostgreSQL runs two hubs in a ``$share`` group (``two_hub_scaling``).
The machine is shared: the load average is recorded, and the per-CPU-second figures are the
ones to compare between runs. Writes reports/bench/ingest.json and prints a table.

    .venv/bin/python bench/ingest.py                     # the full run (about 15 minutes)
    .venv/bin/python bench/ingest.py --duration 8 --overload 15 --quick   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from shared.topics import DeviceTopic, TopicAccess  # noqa: E402
from simulator.broker import Broker  # noqa: E402
from simulator.flood import FloodPlan, FloodReport, Publishers  # noqa: E402
from simulator.hub_process import HubProcess  # noqa: E402

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
TICK = os.sysconf("SC_CLK_TCK")
log = logging.getLogger("bench.ingest")


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss(pid: int | None) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def _sched(pid: int | None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one), summed over the threads."""
    on = wait = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                a, b, _ = (task / "schedstat").read_text().split()
            except (OSError, ValueError):
                continue
            on, wait = on + int(a), wait + int(b)
    except OSError:
        pass
    return on / 1e9, wait / 1e9


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@dataclass
class Database:
    kind: str  # sqlite | postgresql
    url: str | None  # None: the hub's default SQLite file
    cleanup: Callable[[], None]


@contextmanager
def database(kind: str, work: Path) -> Iterator[Database]:
    if kind == "sqlite":
        yield Database(kind, None, lambda: None)
        return
    name = f"edgeloop_bench_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield Database(kind, f"{PG_SERVER}/{name}", lambda: None)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Hubs:
    """One or more ``cloud-hub serve`` processes on one broker and one database."""

    def __init__(self, broker: Broker, db: Database, work: Path, count: int = 1) -> None:
        self.procs: list[HubProcess] = []
        self.admin_key = secrets.token_urlsafe(24)
        for i in range(count):
            env = {"EDGELOOP_MQTT_CLIENT_ID": f"bench-hub-{i}"}
            env.update(broker.hub_env(f"bench-hub-{i}"))  # its credential and TLS
            if count > 1:
                env["EDGELOOP_MQTT_SHARE_GROUP"] = "bench"
            if db.url:
                env["EDGELOOP_DATABASE_URL"] = db.url
            self.procs.append(HubProcess(work / f"hub-{i}", mqtt_port=broker.port,
                                         admin_api_key=self.admin_key, extra_env=env))

    def start(self) -> Hubs:
        for p in self.procs:  # one at a time: the first creates the schema
            p.start(timeout=180)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def metrics(self) -> list[dict[str, Any]]:
        out = []
        for p in self.procs:
            r = httpx.get(f"{p.url}/api/v1/metrics", headers={"X-API-Key": self.admin_key},
                          timeout=30)
            r.raise_for_status()
            out.append(r.json())
        return out

    def stored(self) -> int:
        return sum(m["telemetry_batches"] + m["duplicates"] for m in self.metrics())

    def missing_batches(self) -> int:
        """What the hub itself shows missing: seqs below a stream's highest stored one that
        never arrived (``missing_batches`` in ``GET /api/v1/telemetry/summary``). Messages the
        broker dropped show up here, except those after a stream's last stored one."""
        r = httpx.get(f"{self.procs[0].url}/api/v1/telemetry/summary",
                      params={"limit": 1000}, headers={"X-API-Key": self.admin_key},
                      timeout=120)
        r.raise_for_status()
        return sum(int(row["missing_batches"]) for row in r.json())

    def cpu_s(self) -> float:
        return sum(_cpu_s(p.pid) for p in self.procs)

    def waited_s(self) -> float:
        return sum(_sched(p.pid)[1] for p in self.procs)

    def rss(self) -> int:
        return max(_rss(p.pid) for p in self.procs)


def _count_in_database(hubs: Hubs, db: Database) -> dict[str, int]:
    url = db.url or f"sqlite:///{hubs.procs[0].data_dir / 'hub.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows, readings = conn.execute(text(
                "SELECT count(*), coalesce(sum(readings), 0) FROM telemetry")).one()
            batches_counted, readings_counted = conn.execute(text(
                "SELECT coalesce(sum(telemetry_batches), 0), "
                "coalesce(sum(telemetry_readings), 0) FROM devices")).one()
            dead = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
    finally:
        engine.dispose()
    return {"rows": int(rows), "readings": int(readings), "device_batches": int(batches_counted),
            "device_readings": int(readings_counted), "dead_letters": int(dead)}


def _connect(broker: Broker, processes: int) -> list[dict[str, Any]]:
    """How each publisher process connects: on the secure harness (TLS, a password per
    identity) with its own identity that may publish every device's telemetry, standing in
    for the devices (one connection per device would measure the publishers, not the hub)."""
    access = TopicAccess(publish=(broker.topics.all_devices(DeviceTopic.TELEMETRY),),
                         subscribe=())
    out = []
    for i in range(processes):
        c: dict[str, Any] = {"host": broker.host, "port": broker.port,
                             "client_id": f"bench-flood-{i}"}
        if broker.secure:
            cred = broker.add_client(f"bench-flood-{i}", access)
            c.update(client_id=cred.client_id, username=cred.username, password=cred.password,
                     ca_file=str(broker.ca_file))
        out.append(c)
    return out


def enroll(hubs: Hubs, device_ids: list[str]) -> None:
    """The hub stores only enrolled devices' messages: enroll the flood's, 1,000 a call."""
    url = hubs.procs[0].url
    for start in range(0, len(device_ids), 1000):
        r = httpx.post(f"{url}/api/v1/enrollments",
                       json={"device_ids": device_ids[start:start + 1000]},
                       headers={"X-API-Key": hubs.admin_key}, timeout=300)
        r.raise_for_status()


def measure(broker: Broker, hubs: Hubs, plan: FloodPlan, *, warmup_s: float, window_s: float,
            drain_timeout_s: float = 900.0, stall_s: float = 10.0) -> dict[str, Any]:
    """Offer ``plan`` to running hubs; the stored rate over the window, then drain and count."""
    publishers = Publishers(plan, _connect(broker, plan.processes))
    stored0 = hubs.stored()
    publishers.start()
    time.sleep(warmup_s)
    t0, s0, c0, w0 = time.monotonic(), hubs.stored(), hubs.cpu_s(), hubs.waited_s()
    pub0 = sum(_cpu_s(p) for p in publishers.pids)
    broker0 = _cpu_s(broker.pid)
    rss_max, backlog = hubs.rss(), []
    while time.monotonic() - t0 < window_s:
        time.sleep(min(1.0, window_s / 10))
        rss_max = max(rss_max, hubs.rss())
        backlog.append((time.monotonic() - t0, hubs.stored()))
    t1, s1, c1, w1 = time.monotonic(), hubs.stored(), hubs.cpu_s(), hubs.waited_s()
    pub1 = sum(_cpu_s(p) for p in publishers.pids)
    broker1 = _cpu_s(broker.pid)
    report: FloodReport = publishers.stop()
    offered = report.messages
    # Drain: wait until the hub stored all that the broker acknowledged. If the broker dropped
    # messages for the hub (its queue for the hub's session was full; it logs it), they never
    # come: the bench's publishers do not resend as agents do. Then stop as soon as the hub
    # has stored what the broker still held (no progress for ``stall_s``), and the count in the
    # database says how many were lost, instead of waiting for the drain timeout.
    deadline = time.monotonic() + drain_timeout_s
    last, progressed = hubs.stored(), time.monotonic()
    drops = broker_drop_lines(broker)
    while last - stored0 < offered and time.monotonic() < deadline:
        rss_max = max(rss_max, hubs.rss())
        time.sleep(0.5)
        now_stored = hubs.stored()
        if now_stored != last:
            last, progressed = now_stored, time.monotonic()
        drops = broker_drop_lines(broker)
        if drops and time.monotonic() - progressed > stall_s:
            log.warning("the broker dropped messages for the hub (%d log line(s)); %d of %d "
                        "stored, no progress for %.0f s: not waiting for the rest", drops,
                        last - stored0, offered, stall_s)
            break
    drained = hubs.stored() - stored0 >= offered
    dt = t1 - t0
    stored = s1 - s0
    cpu = c1 - c0
    return {
        "offered_rate": plan.rate, "messages_per_s": round(stored / dt, 1),
        "readings_per_s": round(stored * plan.readings / dt, 1),
        "hub_cpu_share": round(cpu / dt, 3),
        # The hub's threads were runnable but had no CPU for this long per second: on a shared
        # machine, the stored rate is bounded by the CPU the hub is given, not by the hub.
        "hub_waited_for_cpu_s_per_s": round((w1 - w0) / dt, 2),
        "messages_per_cpu_s": round(stored / cpu, 1) if cpu > 0 else None,
        "publisher_cpu_share": round((pub1 - pub0) / dt, 3),
        "broker_cpu_share": round((broker1 - broker0) / dt, 3),
        "hub_rss_bytes_max": rss_max, "published": offered, "drained": drained,
        "broker_drop_log_lines": drops,
        "publisher_errors": report.errors[:5],
        "stored_over_time": [(round(t, 1), s - s0) for t, s in backlog],
    }


DROP_LINE = b"Outgoing messages are being dropped for client"


def broker_drop_lines(broker: Broker) -> int:
    """How many times mosquitto logged that it drops messages queued for a client (its
    ``max_queued_messages`` / ``max_queued_bytes`` for the session were reached)."""
    try:
        return broker.log_path.read_bytes().count(DROP_LINE)
    except OSError:
        return 0


def check_counts(hubs: Hubs, db: Database, published: int, readings: int) -> dict[str, int]:
    """lost and duplicates, counted in the database against what the broker acknowledged."""
    counts = _count_in_database(hubs, db)
    return {
        "lost": max(0, published - counts["rows"]),
        "duplicates": max(0, counts["rows"] - published)
        + max(0, counts["device_batches"] - counts["rows"])
        + max(0, counts["device_readings"] - counts["readings"]),
        "rows": counts["rows"], "dead_letters": counts["dead_letters"],
        "readings_stored": counts["readings"], "readings_published": readings,
    }


def run_case(db_kind: str, readings: int, devices: int, opts: argparse.Namespace,
             console: Console, *, saturation: bool) -> dict[str, Any]:
    """One database x batch size: flood; at batch 10 also saturation and overload."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ingest-") as tmp:
        work = Path(tmp)
        with Broker(workdir=work / "broker") as broker, database(db_kind, work) as db:
            hubs = Hubs(broker, db, work).start()
            try:
                plan = FloodPlan(devices=devices, readings=readings, rate=0.0,
                                 processes=opts.publishers)
                enroll(hubs, plan.device_ids())
                console.print(f"[{db_kind} batch {readings}] flood for {opts.duration:g} s")
                flood = measure(broker, hubs, plan, warmup_s=opts.warmup, window_s=opts.duration)
                published = flood["published"]
                case: dict[str, Any] = {"database": db_kind, "readings_per_message": readings,
                                        "devices": devices, "flood": flood}
                if saturation:
                    sat, steps = find_saturation(broker, hubs, plan, flood, opts, console)
                    case["saturation_rate"] = sat
                    case["saturation_steps"] = steps
                    published += sum(s["published"] for s in steps)
                    rate = 2 * sat
                    console.print(f"[{db_kind}] overload: {rate:.0f} msg/s offered for "
                                  f"{opts.overload:g} s")
                    over = measure(broker, hubs, _rated(plan, rate), warmup_s=opts.warmup,
                                   window_s=opts.overload)
                    published += over["published"]
                    over["stored_ratio"] = round(over["messages_per_s"] / sat, 3) if sat else None
                    # On a shared machine the hub may get less CPU in the overload phase than
                    # when saturation was found: the work per CPU-second, against the flood's,
                    # says whether the hub itself does worse when overloaded.
                    per_cpu, flood_per_cpu = over["messages_per_cpu_s"], flood["messages_per_cpu_s"]
                    over["per_cpu_s_ratio"] = (round(per_cpu / flood_per_cpu, 3)
                                               if per_cpu and flood_per_cpu else None)
                    case["overload"] = over
                counts = check_counts(hubs, db, published, published * readings)
                case.update(counts)
                if saturation:
                    case["overload"]["lost"] = counts["lost"]
                    case["overload"]["hub_missing_batches"] = hubs.missing_batches()
            finally:
                hubs.stop()
    return case


def _rated(plan: FloodPlan, rate: float) -> FloodPlan:
    return FloodPlan(**{**plan.__dict__, "rate": rate})


def find_saturation(broker: Broker, hubs: Hubs, plan: FloodPlan, flood: dict[str, Any],
                    opts: argparse.Namespace, console: Console
                    ) -> tuple[float, list[dict[str, Any]]]:
    """The highest offered rate at which the backlog does not grow: start from the flood's
    stored rate and step down by 10% until a paced run keeps up (stored >= 97% of offered)."""
    rate = flood["messages_per_s"]
    steps: list[dict[str, Any]] = []
    for _ in range(opts.saturation_steps):
        console.print(f"  paced run at {rate:.0f} msg/s")
        run = measure(broker, hubs, _rated(plan, rate), warmup_s=opts.warmup,
                      window_s=opts.duration)
        run["keeps_up"] = run["messages_per_s"] >= 0.97 * rate
        steps.append(run)
        if run["keeps_up"]:
            return rate, steps
        rate *= 0.9
    return rate, steps


def run_two_hubs(readings: int, devices: int, opts: argparse.Namespace,
                 console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ingest-") as tmp:
        work = Path(tmp)
        with Broker(workdir=work / "broker") as broker, database("postgresql", work) as db:
            hubs = Hubs(broker, db, work, count=2).start()
            try:
                plan = FloodPlan(devices=devices, readings=readings, rate=0.0,
                                 processes=opts.publishers)
                enroll(hubs, plan.device_ids())
                console.print(f"[postgresql, two hubs, batch {readings}] flood for "
                              f"{opts.duration:g} s")
                flood = measure(broker, hubs, plan, warmup_s=opts.warmup, window_s=opts.duration)
                counts = check_counts(hubs, db, flood["published"],
                                      flood["published"] * readings)
            finally:
                hubs.stop()
    return {"database": "postgresql", "hubs": 2, "readings_per_message": readings,
            "devices": devices, "flood": flood, **counts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0, help="measured window of each run (s)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--overload", type=float, default=60.0, help="seconds at 2x saturation")
    p.add_argument("--saturation-steps", type=int, default=4)
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument("--batches", default="10,100")
    p.add_argument("--quick", action="store_true",
                   help="no saturation/overload and no two-hub run")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "ingest.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=170)
    load_before = _load()
    started = time.time()
    cases = []
    for db_kind in args.databases.split(","):
        for readings in (int(b) for b in args.batches.split(",")):
            devices = 100 if db_kind == "sqlite" else 1000
            cases.append(run_case(db_kind, readings, devices, args, console,
                                  saturation=not args.quick and readings == 10))
    two_hubs = None
    if not args.quick and "postgresql" in args.databases:
        two_hubs = run_two_hubs(10, 1000, args, console)
    rollup_ms = None
    if "postgresql" in args.databases:
        rollup_ms = measure_rollup_query(console, devices=100, days=30)
    result = summarize(cases, two_hubs, rollup_ms)
    result.update(load_average_before=load_before, load_average_after=_load(),
                  cpu_count=os.cpu_count(), seconds=round(time.time() - started),
                  duration_s=args.duration, overload_s=args.overload,
                  publishers=args.publishers, cases=cases, two_hubs=two_hubs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(console, result)
    console.print(f"written {args.out}")
    return 0 if result["lost"] == 0 and result["duplicates"] == 0 else 1


def measure_rollup_query(console: Console, *, devices: int, days: int,
                         channels: int = 8) -> float:
    """30 days of 1-hour rollups for 100 devices x 8 channels (72,000 bucket rows) generated in a
    PostgreSQL database with the hub's schema; the median of 5 reads of all of them through
    the API's query (:func:`cloud_hub.maintenance.rollups.read_rollups`), in milliseconds."""
    from cloud_hub.db.engine import make_engine
    from cloud_hub.maintenance.rollups import _write, read_rollups

    with tempfile.TemporaryDirectory() as tmp, database("postgresql", Path(tmp)) as db:
        assert db.url is not None
        engine = make_engine(db.url)
        try:
            end = time.time() // 3600 * 3600
            ids = [f"roll-{i:04d}" for i in range(devices)]
            console.print(f"[rollups] generating {devices} devices x {days} days x 24 h x "
                          f"{channels} channels")
            for device in ids:
                buckets = {(device, "1h", end - h * 3600.0): {
                    f"ch{c}": [360.0, 7200.0 + h, 1.0, 30.0] for c in range(channels)}
                    for h in range(days * 24)}
                with engine.begin() as conn:
                    _write(conn, buckets)
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE telemetry_rollups")
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                with engine.connect() as conn:
                    got = read_rollups(conn, device_ids=ids, resolution="1h",
                                       since=end - days * 86_400.0, until=end + 1)
                times.append((time.perf_counter() - t0) * 1000)
                assert len(got) == devices and len(got[ids[0]]["ts"]) == days * 24
        finally:
            engine.dispose()
    times.sort()
    return round(times[len(times) // 2], 1)


def _worst(values: list[Any], pick: Callable[[list[Any]], Any] = min) -> Any:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def summarize(cases: list[dict[str, Any]], two_hubs: dict[str, Any] | None,
              rollup_ms: float | None) -> dict[str, Any]:
    def flood_of(batch: int, key: str) -> list[Any]:
        return [c["flood"][key] for c in cases if c["readings_per_message"] == batch]

    one_pg10 = [c["flood"]["messages_per_s"] for c in cases
                if c["database"] == "postgresql" and c["readings_per_message"] == 10]
    scaling = None
    if two_hubs and one_pg10 and one_pg10[0]:
        scaling = round(two_hubs["flood"]["messages_per_s"] / one_pg10[0], 2)
    overloads = [c["overload"] for c in cases if "overload" in c]
    every = cases + ([two_hubs] if two_hubs else [])
    return {
        "one_hub_messages_per_s_batch10": _worst(flood_of(10, "messages_per_s")),
        "one_hub_readings_per_s_batch100": _worst(flood_of(100, "readings_per_s")),
        "one_hub_messages_per_cpu_s_batch10": _worst(flood_of(10, "messages_per_cpu_s")),
        "one_hub_readings_per_cpu_s_batch100": _worst(
            [m * 100 for m in flood_of(100, "messages_per_cpu_s") if m is not None]),
        "two_hub_scaling": scaling,
        "lost": sum(c["lost"] for c in every),
        "duplicates": sum(c["duplicates"] for c in every),
        "hub_rss_bytes_max": _worst([c["flood"]["hub_rss_bytes_max"] for c in every]
                                    + [o["hub_rss_bytes_max"] for o in overloads], max),
        "overload_stored_ratio": _worst([o.get("stored_ratio") for o in overloads]),
        "overload_lost": sum(o.get("lost", 0) for o in overloads) if overloads else None,
        "rollup_query_ms": rollup_ms,
    }


def print_table(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=f"ingest, one hub process (load average {result['load_average_before']}"
                        f" -> {result['load_average_after']} on {result['cpu_count']} cores)")
    for col in ("database", "batch", "devices", "msg/s", "readings/s", "hub CPU",
                "hub waited for CPU", "msg per CPU-s", "publishers CPU", "broker CPU",
                "peak RSS MB", "lost", "dup"):
        table.add_column(col, justify="right")
    rows = list(result["cases"]) + ([result["two_hubs"]] if result["two_hubs"] else [])
    for c in rows:
        f = c["flood"]
        name = c["database"] + (" x2 hubs" if c.get("hubs") == 2 else "")
        table.add_row(name, str(c["readings_per_message"]), str(c["devices"]),
                      f"{f['messages_per_s']:,.0f}", f"{f['readings_per_s']:,.0f}",
                      f"{f['hub_cpu_share'] * 100:.0f}%",
                      f"{f['hub_waited_for_cpu_s_per_s']:.2f} s/s",
                      f"{f['messages_per_cpu_s'] or 0:,.0f}",
                      f"{f['publisher_cpu_share'] * 100:.0f}%",
                      f"{f['broker_cpu_share'] * 100:.0f}%",
                      f"{f['hub_rss_bytes_max'] / 2**20:.0f}", str(c["lost"]),
                      str(c["duplicates"]))
    console.print(table)
    for c in result["cases"]:
        if "overload" in c:
            o = c["overload"]
            console.print(f"{c['database']}: saturation {c['saturation_rate']:,.0f} msg/s; at "
                          f"2x for {result['overload_s']:g} s stored {o['messages_per_s']:,.0f}"
                          f" msg/s (ratio {o['stored_ratio']}; per CPU-s, against the flood:"
                          f" {o['per_cpu_s_ratio']}; hub CPU {o['hub_cpu_share'] * 100:.0f}%),"
                          f" broker drop lines {o['broker_drop_log_lines']}, missing batches"
                          f" the hub shows {o['hub_missing_batches']}, hub peak RSS "
                          f"{o['hub_rss_bytes_max'] / 2**20:.0f} MB, lost after the load "
                          f"{o['lost']}")
    summary = {k: result[k] for k in (
        "one_hub_messages_per_s_batch10", "one_hub_readings_per_s_batch100",
        "one_hub_messages_per_cpu_s_batch10", "one_hub_readings_per_cpu_s_batch100",
        "two_hub_scaling", "lost", "duplicates", "hub_rss_bytes_max", "overload_stored_ratio",
        "overload_lost", "rollup_query_ms")}
    console.print(summary)


if __name__ == "__main__":
    raise SystemExit(main())
