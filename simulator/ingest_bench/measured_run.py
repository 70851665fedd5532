"""One measured run of the ingest bench: a flood offered to running hubs (at a set rate, or
holding their backlog), its window's figures, then the drain until the hubs stored it all."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cloud_hub.core.config import Settings
from simulator.broker import Broker
from simulator.flood import FloodPlan, FloodReport, Publishers
from simulator.ingest_bench.hubs import Hubs, publisher_connections, stored_count
from simulator.ingest_bench.machine import (
    load_average,
    machine_busy_s,
    process_cpu_s,
    process_rss,
    speed_probe_ms,
)

__all__ = ["DROP_LINE", "Held", "broker_drop_lines", "held_backlog", "measure"]

# The name the bench's log lines have always carried, whichever of its modules logs them.
log = logging.getLogger("bench.ingest")


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


def held_backlog(readings: int) -> Held:
    """About 64 MiB of telemetry (16.5 KB at batch 100, 1.8 KB at batch 10), at least twice the
    hub's Receive Maximum (what it may hold unacknowledged), so it never waits for the broker."""
    window = Settings.model_fields["mqtt_receive_maximum"].default
    return Held(target=max(2 * window, 400_000 // readings))


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points, per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


DROP_LINE = b"Outgoing messages are being dropped for client"


def broker_drop_lines(broker: Broker) -> int:
    """How many times mosquitto logged that it drops messages queued for a client (its
    ``max_queued_messages`` / ``max_queued_bytes`` for the session were reached)."""
    try:
        return broker.log_path.read_bytes().count(DROP_LINE)
    except OSError:
        return 0


def measure(broker: Broker, hubs: Hubs, plan: FloodPlan, *, warmup_s: float, window_s: float,
            held: Held | None = None, drain_timeout_s: float = 900.0,
            stall_s: float = 10.0) -> dict[str, Any]:
    """Offer ``plan`` (at its rate, or holding a backlog) to running hubs: the stored rate and
    the backlog's slope over the window, then drain and count what the broker dropped."""
    publishers = Publishers(plan, publisher_connections(broker, plan.processes))
    counters0 = hubs.counters()
    stored0 = stored_count(counters0)
    drops0 = broker_drop_lines(broker)
    if held is not None:
        publishers.set_rate(held.rate(0.0, 0))
    publishers.start()
    began = time.monotonic()
    samples: list[tuple[float, int, int]] = []  # (t since start, acknowledged, stored)
    probes: list[tuple[float, float]] = []  # (t since start, speed_probe_ms), every 2 s
    rss_max, broker_rss_max = hubs.rss(), process_rss(broker.pid)
    marks: dict[str, tuple[float, ...]] = {}

    def mark() -> tuple[float, ...]:
        return (time.monotonic() - began, hubs.stored() - stored0, hubs.cpu_s(),
                hubs.waited_s(), sum(process_cpu_s(p) for p in publishers.pids),
                process_cpu_s(broker.pid), hubs.database_cpu_s(), machine_busy_s())

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
        rss_max = max(rss_max, hubs.rss())
        broker_rss_max = max(broker_rss_max, process_rss(broker.pid))
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
        rss_max = max(rss_max, hubs.rss())
        broker_rss_max = max(broker_rss_max, process_rss(broker.pid))
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
        "load_average": load_average(),
        # Lower is faster: the median CPU time of the fixed probe over the window.
        "speed_probe_ms": _median([ms for t, ms in probes if t0 <= t <= t1]),
        "stored_over_time": [(round(t, 1), st) for t, _, st in samples],
    }
