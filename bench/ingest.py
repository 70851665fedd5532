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
then offers twice that for ``--overload`` seconds:
``overload_stored_ratio`` = the stored rate during the overload / the saturation rate
(``overload_offered_ratio``: what the broker acknowledged from the publishers meanwhile, the
same way; about 2), the hub's peak RSS, and what is lost once the load ends. On
PostgreSQL it runs two hubs in a ``$share`` group: ``two_hub_scaling`` (their stored rate
against one hub's), ``two_hub_per_cpu_s_ratio`` (their work per hub CPU-second against one
hub's: about 1 when they take nothing from each other) and ``two_hub_machine_busy_cores``
(one hub, two hubs: the cores a second hub could use). The machine is shared: the load
average is recorded with every phase, and the per-CPU-second figures are the ones to compare
between runs. Writes reports/bench/ingest.json and prints a table.

    .venv/bin/python bench/ingest.py                     # the full run (about 20 minutes)
    .venv/bin/python bench/ingest.py --duration 8 --settle 0 --quick   # a quick look
    .venv/bin/python bench/ingest.py --quick --encoding msgpack   # telemetry in MessagePack
    # a fleet's shape: 10,000 devices, each in about one message of a batch (not four)
    .venv/bin/python bench/ingest.py --quick --databases postgresql --batches 10 --devices 10000
    # the overload phase alone, at 2 x 4,000 msg/s for 60 s, after a 10-s held flood:
    .venv/bin/python bench/ingest.py --databases sqlite --batches 10 --duration 10 --settle 0 \
        --saturation-rate 4000 --overload 60 --skip-two-hubs --skip-rollups
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlmodel import Session  # noqa: E402

from cloud_hub.core.config import Settings  # noqa: E402
from shared.topics import DeviceTopic, TopicAccess  # noqa: E402
from simulator.bench_database import Database, database  # noqa: E402
from simulator.broker import Broker  # noqa: E402
from simulator.flood import FloodPlan, FloodReport, Publishers  # noqa: E402
from simulator.hub_process import HubProcess  # noqa: E402

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


def _machine_busy_s() -> float:
    """CPU-seconds the whole machine spent busy (every core, every process), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


def _database_cpu_s(url: str | None) -> float:
    """CPU-seconds of the PostgreSQL backends serving the bench's database (their command line
    names it); 0 for SQLite, which runs inside the hub and counts as the hub's."""
    if url is None:
        return 0.0
    name = f" {url.rsplit('/', 1)[1]} ".encode()
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if name in (proc / "cmdline").read_bytes():
                total += _cpu_s(int(proc.name))
        except OSError:
            continue
    return total


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def speed_probe_ms() -> float:
    """CPU milliseconds of one fixed piece of pure-Python work (dict and float operations,
    as the hub's own): how fast a core of the machine is right now. On a shared virtual
    machine the same work has taken from 1 to 1.9 times as long from one second to the next,
    idle, so a phase's per-CPU-second figures are read against the probe's median during it."""
    table: dict[int, float] = {}
    began = time.process_time()
    for i in range(50_000):
        table[i % 1000] = table.get(i % 1000, 0.0) + i * 1.5
    return round((time.process_time() - began) * 1000, 2)


@contextlib.contextmanager
def _affinity(cpus: set[int] | None) -> Iterator[None]:
    """This process on ``cpus`` meanwhile (what it starts inherits them); None: unchanged."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _stored(counted: dict[str, int]) -> int:
    """Messages the hubs took off the broker for good: stored, or found stored already."""
    return counted["telemetry_batches"] + counted["duplicates"]


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")  # a record's first line


class Hubs:
    """One or more ``cloud-hub serve`` processes on one broker and one database."""

    def __init__(self, broker: Broker, db: Database, work: Path, count: int = 1,
                 cpus: set[int] | None = None) -> None:
        self.procs: list[HubProcess] = []
        self.db = db
        self.cpus = cpus  # the hubs' CPUs (--pin-hub); None: any
        self.admin_key = "el_" + secrets.token_urlsafe(24)  # never "-..." (an option)
        for i in range(count):
            env = {"EDGELOOP_MQTT_CLIENT_ID": f"bench-hub-{i}"}
            env.update(broker.hub_env(f"bench-hub-{i}"))  # its credential and TLS
            if count > 1:  # set up as docs/scaling.md says: one share group, one signing key
                env["EDGELOOP_MQTT_SHARE_GROUP"] = "bench"
                env["EDGELOOP_SIGNING_KEY_PATH"] = str(work / "keys" / "signing-key.pem")
                env["EDGELOOP_SIGNING_KEYS_DIR"] = str(work / "keys" / "rotated")
            if db.url:
                env["EDGELOOP_DATABASE_URL"] = db.url
            self.procs.append(HubProcess(work / f"hub-{i}", mqtt_port=broker.port,
                                         admin_api_key=self.admin_key, extra_env=env))

    def start(self) -> Hubs:
        for p in self.procs:  # one at a time: the first creates the schema
            with _affinity(self.cpus):  # inherited by the process and all its threads
                p.launch()
            p.wait_healthy(180)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def log_warnings(self, keep: int = 20) -> dict[str, Any]:
        """The hubs' WARNING and ERROR log lines (a reconnect, a retried commit): how many, and
        the last ``keep``, each with the traceback that followed it, if any. Read before the
        bench's directory, and the logs in it, are gone."""
        lines: list[str] = []
        for p in self.procs:
            try:
                text_ = p.log_path.read_text(errors="replace")
            except OSError:
                continue
            inside = False  # in a WARNING or ERROR record: its traceback lines go with it
            for line in text_.splitlines():
                if _LOG_RECORD.match(line):
                    inside = " WARNING " in line or " ERROR " in line
                    if inside:
                        lines.append(f"{p.data_dir.name}: {line}")
                elif inside and lines:
                    lines[-1] += "\n" + line
        return {"count": len(lines), "last": lines[-keep:]}

    def metrics(self) -> list[dict[str, Any]]:
        out = []
        for p in self.procs:
            r = httpx.get(f"{p.url}/api/v1/metrics", headers={"X-API-Key": self.admin_key},
                          timeout=30)
            r.raise_for_status()
            out.append(r.json())
        return out

    def stored(self) -> int:
        return _stored(self.counters())

    def counters(self) -> dict[str, int]:
        """What the hubs counted, summed: ``telemetry_batches`` (each stored once),
        ``duplicates`` (messages found stored already: in the bench, whose publishers never
        resend, the broker's redeliveries after a hub reconnected) and ``commit_errors``."""
        got = self.metrics()
        return {k: sum(int(m[k]) for m in got)
                for k in ("telemetry_batches", "duplicates", "commit_errors")}

    def database_cpu_s(self) -> float:
        return _database_cpu_s(self.db.url)

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
    engine = create_engine(_database_url(hubs, db))
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


def enroll(database_url: str, device_ids: list[str]) -> None:
    """The hub stores only enrolled devices' messages: record the flood's devices in its
    registry, without broker credentials. Bench-only: the flood is published by the
    ``bench-flood-*`` identities (:func:`_connect`), never with a device's credential, so the
    1,000 per-device dynsec clients and roles that ``POST /api/v1/enrollments`` creates (about
    a minute of setup per PostgreSQL case) would never be used. The product still gives every
    device its own credential; the hub checks the registry per batch, as for any device."""
    from cloud_hub.db.enrollments import record_enrollment

    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            record_enrollment(session, device_ids, broker_credential=False)
    finally:
        engine.dispose()


def _database_url(hubs: Hubs, db: Database) -> str:
    return db.url or f"sqlite:///{hubs.procs[0].data_dir / 'hub.db'}"


@dataclass
class Held:
    """Hold the hub's backlog (acknowledged by the broker, not yet stored) near ``target``
    messages by setting the publishers' rate: the hub never waits for work and the broker's
    queue for it never overflows, so the stored rate is the hub's capacity, with nothing lost.
    An unpaced flood instead fills the broker's queue in seconds (16.5 KB messages at batch 100)
    and loses what the broker drops beyond it."""

    target: int
    tau_s: float = 2.0  # the backlog error is worked off over about this long

    def rate(self, stored_rate: float, backlog: int) -> float:
        return max(50.0, stored_rate + (self.target - backlog) / self.tau_s)


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points, per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0


def measure(broker: Broker, hubs: Hubs, plan: FloodPlan, *, warmup_s: float, window_s: float,
            held: Held | None = None, drain_timeout_s: float = 900.0,
            stall_s: float = 10.0) -> dict[str, Any]:
    """Offer ``plan`` (at its rate, or holding a backlog) to running hubs: the stored rate and
    the backlog's slope over the window, then drain and count what the broker dropped."""
    publishers = Publishers(plan, _connect(broker, plan.processes))
    counters0 = hubs.counters()
    stored0 = _stored(counters0)
    drops0 = broker_drop_lines(broker)
    if held is not None:
        publishers.set_rate(held.rate(0.0, 0))
    publishers.start()
    began = time.monotonic()
    samples: list[tuple[float, int, int]] = []  # (t since start, acknowledged, stored)
    probes: list[tuple[float, float]] = []  # (t since start, speed_probe_ms), every 2 s
    rss_max, broker_rss_max = hubs.rss(), _rss(broker.pid)
    marks: dict[str, tuple[float, ...]] = {}

    def mark() -> tuple[float, ...]:
        return (time.monotonic() - began, hubs.stored() - stored0, hubs.cpu_s(),
                hubs.waited_s(), sum(_cpu_s(p) for p in publishers.pids), _cpu_s(broker.pid),
                hubs.database_cpu_s(), _machine_busy_s())

    while True:
        now = time.monotonic() - began
        if "t0" not in marks and now >= warmup_s:
            marks["t0"] = mark()
        if now >= warmup_s + window_s:
            marks["t1"] = mark()
            acked_t1 = publishers.acknowledged()
            break
        time.sleep(0.5)
        acked, stored = publishers.acknowledged(), hubs.stored() - stored0
        samples.append((time.monotonic() - began, acked, stored))
        if len(samples) % 4 == 0:
            probes.append((time.monotonic() - began, speed_probe_ms()))
        rss_max, broker_rss_max = max(rss_max, hubs.rss()), max(broker_rss_max, _rss(broker.pid))
        if held is not None:
            recent = [(t, st) for t, _, st in samples if t >= samples[-1][0] - 2.0]
            publishers.set_rate(held.rate(_slope(recent), acked - stored))
    (t0, s0, c0, w0, p0, b0, d0, m0), (t1, s1, c1, w1, p1, b1, d1, m1) = (marks["t0"],
                                                                          marks["t1"])
    in_window = [(t, a, st) for t, a, st in samples if t0 <= t <= t1]
    acked0 = min((a for t, a, _ in samples if t >= t0), default=0)
    report: FloodReport = publishers.stop()
    offered = report.messages
    # Drain: wait until the hub stored all that the broker acknowledged. Messages the broker
    # dropped for the hub (its queue for the hub's session was full; it logs it) never come:
    # the bench's publishers do not resend as agents do. Then stop as soon as the hub has
    # stored what the broker still held (no progress for ``stall_s``); the database's count
    # says how many were lost.
    # Stored once, not stored or found stored already: a message the broker delivered again
    # (after the hub reconnected) counts once, so the hub is not taken for done while it still
    # stores what the broker held (the database's count would then race its last commits).
    def unique() -> int:
        return hubs.counters()["telemetry_batches"] - counters0["telemetry_batches"]

    deadline = time.monotonic() + drain_timeout_s
    last, progressed = unique(), time.monotonic()
    while last < offered and time.monotonic() < deadline:
        rss_max, broker_rss_max = max(rss_max, hubs.rss()), max(broker_rss_max, _rss(broker.pid))
        time.sleep(0.5)
        now_stored = unique()
        if now_stored != last:
            last, progressed = now_stored, time.monotonic()
        if broker_drop_lines(broker) > drops0 and time.monotonic() - progressed > stall_s:
            log.warning("the broker dropped messages for the hub; %d of %d stored, no "
                        "progress for %.0f s: not waiting for the rest", last, offered,
                        stall_s)
            break
    counters1 = hubs.counters()
    drained = counters1["telemetry_batches"] - counters0["telemetry_batches"] >= offered
    dt = t1 - t0
    stored, cpu, pub_cpu = int(s1 - s0), c1 - c0, p1 - p0
    acked_in_window = acked_t1 - acked0
    return {
        "offered_rate": round(acked_in_window / dt, 1) if held else plan.rate,
        # What the broker acknowledged per second over the window: the load really offered
        # (publishers on a busy machine could fall short of a paced rate).
        "acknowledged_rate": round(acked_in_window / dt, 1),
        "held_backlog": held.target if held else None,
        "messages_per_s": round(stored / dt, 1),
        "readings_per_s": round(stored * plan.readings / dt, 1),
        # Positive: the backlog grew over the window (the hub did not keep up).
        "backlog_slope_per_s": round(_slope([(t, a - st) for t, a, st in in_window]), 1),
        "backlog_end": in_window[-1][1] - in_window[-1][2] if in_window else None,
        "hub_cpu_share": round(cpu / dt, 3),
        # The hub's threads were runnable but had no CPU for this long per second: on a shared
        # machine, the stored rate is bounded by the CPU the hub is given, not by the hub.
        "hub_waited_for_cpu_s_per_s": round((w1 - w0) / dt, 2),
        "messages_per_cpu_s": round(stored / cpu, 1) if cpu > 0 else None,
        "publisher_cpu_share": round(pub_cpu / dt, 3),
        "publisher_cpu_us_per_message": (round(pub_cpu / acked_in_window * 1e6, 1)
                                         if acked_in_window > 0 else None),
        "broker_cpu_share": round((b1 - b0) / dt, 3),
        # PostgreSQL's backends for the bench's database (None on SQLite: inside the hub).
        "database_cpu_share": round((d1 - d0) / dt, 3) if hubs.db.url else None,
        # Every core of the machine, everything on it: how close to its 2 cores the run was.
        "machine_busy_cores": round((m1 - m0) / dt, 2),
        "hub_rss_bytes_max": rss_max, "broker_rss_bytes_max": broker_rss_max,
        "published": offered, "drained": drained,
        # Redeliveries the hub found stored already, and commits that failed and were retried.
        "hub_duplicates": counters1["duplicates"] - counters0["duplicates"],
        "hub_commit_errors": counters1["commit_errors"] - counters0["commit_errors"],
        "broker_drop_log_lines": broker_drop_lines(broker) - drops0,
        "publisher_errors": report.errors[:5], "publisher_in_doubt": report.in_doubt,
        "load_average": _load(),
        # Lower is faster: the median CPU time of the fixed probe over the window.
        "speed_probe_ms": _median([ms for t, ms in probes if t0 <= t <= t1]),
        "stored_over_time": [(round(t, 1), st) for t, _, st in samples],
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


def held_backlog(readings: int) -> Held:
    """About 64 MiB of telemetry (16.5 KB at batch 100, 1.8 KB at batch 10), at least twice the
    hub's Receive Maximum (what it may hold unacknowledged), so it never waits for the broker."""
    window = Settings.model_fields["mqtt_receive_maximum"].default
    return Held(target=max(2 * window, 400_000 // readings))


def run_case(db_kind: str, readings: int, devices: int, opts: argparse.Namespace,
             console: Console, *, saturation: bool) -> dict[str, Any]:
    """One database x batch size: the hub's capacity with a held backlog; at batch 10 also
    saturation and overload. Everything the broker acknowledged is counted in the database."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ingest-") as tmp:
        work = Path(tmp)
        with Broker(workdir=work / "broker") as broker, database(db_kind) as db:
            hubs = Hubs(broker, db, work, cpus=opts.hub_cpus).start()
            try:
                plan = FloodPlan(devices=devices, readings=readings, rate=0.0,
                                 processes=opts.publishers, encoding=opts.encoding)
                enroll(_database_url(hubs, db), plan.device_ids())
                held = held_backlog(readings)
                console.print(f"{db_kind}, batch {readings}: backlog held at {held.target:,} "
                              f"messages for {opts.duration:g} s")
                flood = measure(broker, hubs, plan, warmup_s=opts.warmup + opts.settle,
                                window_s=opts.duration, held=held)
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
                    rate = 2 * sat
                    console.print(f"{db_kind}: overload: {rate:,.0f} msg/s offered for "
                                  f"{opts.overload:g} s")
                    over = measure(broker, hubs, _rated(plan, rate), warmup_s=opts.warmup,
                                   window_s=opts.overload)
                    published += over["published"]
                    phases.append(over)
                    # The stored rate while offered twice the saturation rate, against it.
                    over["stored_ratio"] = round(over["messages_per_s"] / sat, 3) if sat else None
                    # ~2.0 when the publishers really offered twice the saturation rate.
                    over["offered_ratio"] = (round(over["acknowledged_rate"] / sat, 3)
                                             if sat else None)
                    # On a shared machine the hub may get less CPU in the overload phase than
                    # when saturation was found: the work per CPU-second, against the held
                    # flood's, says whether the hub itself does worse when overloaded.
                    per_cpu, flood_per_cpu = over["messages_per_cpu_s"], flood["messages_per_cpu_s"]
                    over["per_cpu_s_ratio"] = (round(per_cpu / flood_per_cpu, 3)
                                               if per_cpu and flood_per_cpu else None)
                    # The fairness of the ratio: the CPU the hub, the publishers and the broker
                    # had in the overload against the paced run that set the saturation rate
                    # (same publisher processes; the other load of a shared machine differs).
                    at_sat = next((s for s in steps if s.get("keeps_up")
                                   and abs(s["offered_rate"] - sat) < 0.1), None)
                    over["against_saturation_run"] = _cpu_compared(over, at_sat)
                    case["overload"] = over
                counts = check_counts(hubs, db, published, published * readings)
                case.update(counts)
                case["broker_drop_log_lines"] = sum(p["broker_drop_log_lines"] for p in phases)
                case["publisher_errors"] = [e for p in phases for e in p["publisher_errors"]]
                if saturation:
                    case["overload"]["lost"] = counts["lost"]
                    case["overload"]["hub_missing_batches"] = hubs.missing_batches()
            finally:
                hubs.stop()
                warnings = hubs.log_warnings()
    case["hub_log_warnings"] = warnings
    case["ok"] = _case_ok(case)
    return case


def _cpu_compared(over: dict[str, Any], sat: dict[str, Any] | None) -> dict[str, Any] | None:
    """Overload against the saturation run: hub CPU share and work per CPU-second (ratios),
    and the publishers' and the broker's CPU share in each (cores)."""
    if sat is None:
        return None

    def ratio(key: str) -> float | None:
        a, b = over.get(key), sat.get(key)
        return round(a / b, 3) if a and b else None

    return {"hub_cpu_share_ratio": ratio("hub_cpu_share"),
            "messages_per_cpu_s_ratio": ratio("messages_per_cpu_s"),
            "publisher_cpu_share": [sat["publisher_cpu_share"], over["publisher_cpu_share"]],
            "broker_cpu_share": [sat["broker_cpu_share"], over["broker_cpu_share"]],
            "hub_waited_for_cpu_s_per_s": [sat["hub_waited_for_cpu_s_per_s"],
                                           over["hub_waited_for_cpu_s_per_s"]],
            "load_average": [sat["load_average"], over["load_average"]],
            "speed_probe_ms": [sat.get("speed_probe_ms"), over.get("speed_probe_ms")]}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _case_ok(case: dict[str, Any]) -> bool:
    """Nothing lost, nothing stored twice, no drop logged by the broker, no publisher error."""
    return (case["lost"] == 0 and case["duplicates"] == 0
            and case.get("broker_drop_log_lines", 0) == 0 and not case.get("publisher_errors"))


def _rated(plan: FloodPlan, rate: float) -> FloodPlan:
    return FloodPlan(**{**plan.__dict__, "rate": rate})


def find_saturation(broker: Broker, hubs: Hubs, plan: FloodPlan, flood: dict[str, Any],
                    opts: argparse.Namespace, console: Console
                    ) -> tuple[float, list[dict[str, Any]]]:
    """The highest offered rate at which the backlog does not grow, from a ramp of paced runs
    around the held flood's stored rate T (0.85 T, 0.95 T, 1.05 T, ...; below 0.85 T in steps
    of 10% when that one does not keep up), then halving the gap between the highest rate that
    kept up and the lowest that did not until it is under ``--saturation-resolution`` (a 10%
    step alone would leave the rate up to 10% under the hub's, and the overload's ratio that
    much too kind). A run keeps up when its backlog grew by less than 2% of the offered rate per
    second, least squares over ``--saturation-window`` seconds (a short run cannot tell a slow
    growth from noise)."""
    capacity = flood["messages_per_s"]
    steps: list[dict[str, Any]] = []

    def paced(rate: float, label: str) -> bool:
        console.print(f"  paced run at {rate:,.0f} msg/s ({label}) for "
                      f"{opts.saturation_window:g} s")
        run = measure(broker, hubs, _rated(plan, rate), warmup_s=opts.warmup,
                      window_s=opts.saturation_window)
        run["keeps_up"] = run["backlog_slope_per_s"] <= 0.02 * rate
        steps.append(run)
        return bool(run["keeps_up"])

    best, above = 0.0, float("inf")  # the highest rate kept up, the lowest not kept up
    factor, going = 0.85, +1
    for _ in range(opts.saturation_steps):
        rate = capacity * factor
        if paced(rate, f"{factor:.2f} of the held rate"):
            best = max(best, rate)
            if going < 0:
                break
            factor += 0.1
        else:
            above = min(above, rate)
            if best or factor <= 0.35:
                break
            going = -1
            factor -= 0.1
    if not best:  # nothing kept up: what the hub stored when offered the least of them
        return round(min(s["messages_per_s"] for s in steps), 1), steps
    for _ in range(opts.saturation_bisections):
        if above == float("inf") or above <= best * (1 + opts.saturation_resolution):
            break
        rate = (best + above) / 2
        if paced(rate, f"between {best:,.0f} and {above:,.0f}"):
            best = rate
        else:
            above = rate
    return round(best, 1), steps


def run_two_hubs(readings: int, devices: int, opts: argparse.Namespace,
                 console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ingest-") as tmp:
        work = Path(tmp)
        with Broker(workdir=work / "broker") as broker, database("postgresql") as db:
            hubs = Hubs(broker, db, work, count=2, cpus=opts.hub_cpus).start()
            try:
                plan = FloodPlan(devices=devices, readings=readings, rate=0.0,
                                 processes=opts.publishers, encoding=opts.encoding)
                enroll(_database_url(hubs, db), plan.device_ids())
                held = held_backlog(readings)
                console.print(f"postgresql, two hubs, batch {readings}: backlog held at "
                              f"{held.target:,} messages for {opts.duration:g} s")
                flood = measure(broker, hubs, plan, warmup_s=opts.warmup + opts.settle,
                                window_s=opts.duration, held=held)
                counts = check_counts(hubs, db, flood["published"],
                                      flood["published"] * readings)
            finally:
                hubs.stop()
                warnings = hubs.log_warnings()
    case = {"database": "postgresql", "hubs": 2, "readings_per_message": readings,
            "devices": devices, "flood": flood, **counts, "hub_log_warnings": warnings,
            "broker_drop_log_lines": flood["broker_drop_log_lines"],
            "publisher_errors": flood["publisher_errors"]}
    case["ok"] = _case_ok(case)
    return case


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
    load_before = _load()
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
    result.update(load_average_before=load_before, load_average_after=_load(),
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


def measure_rollup_query(console: Console, *, devices: int, days: int,
                         channels: int = 8) -> float:
    """30 days of 1-hour rollups for 100 devices x 8 channels (72,000 bucket rows) generated in a
    PostgreSQL database with the hub's schema, vacuumed and checkpointed; the median of 5 reads
    of all of them through the API's query
    (:func:`cloud_hub.maintenance.rollup_reads.read_rollups`), in milliseconds."""
    from cloud_hub.db.engine import make_engine
    from cloud_hub.maintenance.rollup_reads import read_rollups
    from cloud_hub.maintenance.rollups import _write

    with database("postgresql") as db:
        assert db.url is not None
        engine = make_engine(db.url)
        try:
            end = time.time() // 3600 * 3600
            ids = [f"roll-{i:04d}" for i in range(devices)]
            console.print(f"rollups: generating {devices} devices x {days} days x 24 h x "
                          f"{channels} channels")
            for device in ids:
                buckets = {(device, "1h", end - h * 3600.0): {
                    f"ch{c}": [360.0, 7200.0 + h, 1.0, 30.0] for c in range(channels)}
                    for h in range(days * 24)}
                with engine.begin() as conn:
                    _write(conn, buckets)
            # the history is settled, as 30-day-old rollups are: the query is timed, not the
            # background flushing of the rows this setup has just written (nor the floods')
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE telemetry_rollups")
                conn.exec_driver_sql("CHECKPOINT")
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _worst(values: list[Any], pick: Callable[[list[Any]], Any] = min) -> Any:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def summarize(cases: list[dict[str, Any]], two_hubs: dict[str, Any] | None,
              rollup_ms: float | None) -> dict[str, Any]:
    def flood_of(batch: int, key: str) -> list[Any]:
        return [c["flood"][key] for c in cases if c["readings_per_message"] == batch]

    pg10 = [c["flood"] for c in cases
            if c["database"] == "postgresql" and c["readings_per_message"] == 10][:1]
    scaling = per_cpu_ratio = None
    if two_hubs and pg10:
        scaling = _ratio(two_hubs["flood"]["messages_per_s"], pg10[0]["messages_per_s"])
        # Each hub's work per CPU-second with two, against one alone: about 1 when the hubs
        # take nothing from each other, so that the factor is bounded only by the cores.
        per_cpu_ratio = _ratio(two_hubs["flood"]["messages_per_cpu_s"],
                               pg10[0]["messages_per_cpu_s"])
    # How busy the machine was with one hub and with two (PostgreSQL, batch 10): two hubs can
    # add only what one left idle of the machine's cores.
    busy = [f.get("machine_busy_cores") for f in pg10]
    overloads = [c["overload"] for c in cases if "overload" in c]
    every = cases + ([two_hubs] if two_hubs else [])
    return {
        "one_hub_messages_per_s_batch10": _worst(flood_of(10, "messages_per_s")),
        "one_hub_readings_per_s_batch100": _worst(flood_of(100, "readings_per_s")),
        "one_hub_messages_per_cpu_s_batch10": _worst(flood_of(10, "messages_per_cpu_s")),
        "one_hub_readings_per_cpu_s_batch100": _worst(
            [m * 100 for m in flood_of(100, "messages_per_cpu_s") if m is not None]),
        "two_hub_scaling": scaling,
        "two_hub_per_cpu_s_ratio": per_cpu_ratio,
        "two_hub_machine_busy_cores": (busy + [two_hubs["flood"].get("machine_busy_cores")]
                                       if two_hubs and busy else None),
        "lost": sum(c["lost"] for c in every),
        "duplicates": sum(c["duplicates"] for c in every),
        # Not a defect by themselves (each was stored once): how often the broker delivered
        # again what a hub had stored, and how often a hub's commit failed and was retried.
        "hub_duplicates": sum(p.get("hub_duplicates", 0) for p in _phases(every)),
        "hub_commit_errors": sum(p.get("hub_commit_errors", 0) for p in _phases(every)),
        "hub_rss_bytes_max": _worst([c["flood"]["hub_rss_bytes_max"] for c in every]
                                    + [o["hub_rss_bytes_max"] for o in overloads], max),
        "overload_stored_ratio": _worst([o.get("stored_ratio") for o in overloads]),
        "overload_offered_ratio": _worst([o.get("offered_ratio") for o in overloads]),
        "overload_lost": sum(o.get("lost", 0) for o in overloads) if overloads else None,
        "overload_broker_drop_log_lines": (sum(o["broker_drop_log_lines"] for o in overloads)
                                           if overloads else None),
        "broker_drop_log_lines": sum(c.get("broker_drop_log_lines", 0) for c in every),
        "broker_rss_bytes_max": _worst([c["flood"]["broker_rss_bytes_max"] for c in every]
                                       + [o["broker_rss_bytes_max"] for o in overloads], max),
        "publisher_cpu_us_per_message_batch10": _worst(
            flood_of(10, "publisher_cpu_us_per_message"), max),
        "rollup_query_ms": rollup_ms,
        "ok": all(c["ok"] for c in every),
    }


def _phases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured phases of the cases: each one's flood, paced runs and overload."""
    return [p for c in cases
            for p in [c["flood"], *c.get("saturation_steps", []), c.get("overload")] if p]


def print_table(console: Console, result: dict[str, Any]) -> None:
    """Two tables, so that no cell is cut to the terminal's width: what was stored, and where
    the machine's CPU and memory went meanwhile."""
    rows = list(result["cases"]) + ([result["two_hubs"]] if result["two_hubs"] else [])
    stored = Table(title=f"ingest, backlog held (load average {result['load_average_before']}"
                         f" -> {result['load_average_after']} on {result['cpu_count']} cores)")
    used = Table(title="meanwhile, on the machine")
    for table, columns in (
            (stored, ("database", "batch", "devices", "backlog held", "msg/s", "readings/s",
                      "msg per hub CPU-s", "broker drops", "lost", "dup", "ok")),
            (used, ("database", "batch", "hub CPU", "hub waited for CPU s/s", "publishers CPU",
                    "µs per msg published", "broker CPU", "database CPU",
                    "machine busy cores", "hub RSS MB", "broker RSS MB", "load"))):
        for col in columns:
            table.add_column(col, justify="right")
    for c in rows:
        f = c["flood"]
        name = c["database"] + (" x2 hubs" if c.get("hubs") == 2 else "")
        batch = str(c["readings_per_message"])
        stored.add_row(name, batch, str(c["devices"]), f"{f['held_backlog'] or 0:,}",
                       f"{f['messages_per_s']:,.0f}", f"{f['readings_per_s']:,.0f}",
                       f"{f['messages_per_cpu_s'] or 0:,.0f}",
                       str(c.get("broker_drop_log_lines", 0)), str(c["lost"]),
                       str(c["duplicates"]), "yes" if c["ok"] else "[bold red]NO[/]")
        used.add_row(name, batch, f"{f['hub_cpu_share'] * 100:.0f}%",
                     f"{f['hub_waited_for_cpu_s_per_s']:.2f}",
                     f"{f['publisher_cpu_share'] * 100:.0f}%",
                     str(f["publisher_cpu_us_per_message"]),
                     f"{f['broker_cpu_share'] * 100:.0f}%",
                     ("-" if f.get("database_cpu_share") is None
                      else f"{f['database_cpu_share'] * 100:.0f}%"),
                     f"{f.get('machine_busy_cores', 0):.2f}",
                     f"{f['hub_rss_bytes_max'] / 2**20:.0f}",
                     f"{f['broker_rss_bytes_max'] / 2**20:.0f}", str(f["load_average"]))
    console.print(stored)
    console.print(used)
    for c in result["cases"]:
        for step in c.get("saturation_steps", []):
            console.print(f"{c['database']}: paced {step['offered_rate']:,.0f} msg/s -> stored "
                          f"{step['messages_per_s']:,.0f}/s, backlog slope "
                          f"{step['backlog_slope_per_s']:+,.0f}/s: "
                          f"{'keeps up' if step['keeps_up'] else 'falls behind'} (load "
                          f"{step['load_average']}, speed probe {step.get('speed_probe_ms')} "
                          f"ms)")
        if "overload" in c:
            o = c["overload"]
            console.print(f"{c['database']}: saturation {c['saturation_rate']:,.0f} msg/s; at "
                          f"2x for {result['overload_s']:g} s (acknowledged "
                          f"{o.get('offered_ratio')} x) stored {o['messages_per_s']:,.0f}"
                          f" msg/s (ratio {o['stored_ratio']}; per CPU-s, against the held "
                          f"flood: {o['per_cpu_s_ratio']}; against the saturation run: "
                          f"{o.get('against_saturation_run')}; hub CPU "
                          f"{o['hub_cpu_share'] * 100:.0f}%), backlog at the end "
                          f"{o['backlog_end']:,}, broker drop lines "
                          f"{o['broker_drop_log_lines']}, missing batches the hub shows "
                          f"{o['hub_missing_batches']}, hub peak RSS "
                          f"{o['hub_rss_bytes_max'] / 2**20:.0f} MB, broker peak RSS "
                          f"{o['broker_rss_bytes_max'] / 2**20:.0f} MB, lost after the load "
                          f"{o['lost']}, redeliveries the hub found stored "
                          f"{o.get('hub_duplicates')}, commits retried "
                          f"{o.get('hub_commit_errors')} (load {o['load_average']}, speed probe "
                          f"{o.get('speed_probe_ms')} ms, held flood's "
                          f"{c['flood'].get('speed_probe_ms')} ms)")
    for c in rows:
        for e in c.get("publisher_errors", []):
            console.print(f"[red]{c['database']} batch {c['readings_per_message']}: {e}[/]")
        logged = c.get("hub_log_warnings") or {}
        if logged.get("count"):
            console.print(f"{c['database']} batch {c['readings_per_message']}: "
                          f"{logged['count']} WARNING/ERROR lines in the hub's log; the last:")
            for line in logged["last"][-5:]:
                console.print(f"  {line}", markup=False)
    summary = {k: result[k] for k in (
        "one_hub_messages_per_s_batch10", "one_hub_readings_per_s_batch100",
        "one_hub_messages_per_cpu_s_batch10", "one_hub_readings_per_cpu_s_batch100",
        "two_hub_scaling", "two_hub_per_cpu_s_ratio", "two_hub_machine_busy_cores", "lost",
        "duplicates", "hub_duplicates", "hub_commit_errors", "broker_drop_log_lines",
        "hub_rss_bytes_max", "broker_rss_bytes_max", "publisher_cpu_us_per_message_batch10",
        "overload_stored_ratio", "overload_offered_ratio", "overload_lost", "rollup_query_ms",
        "ok")}
    console.print(summary)


if __name__ == "__main__":
    raise SystemExit(main())
