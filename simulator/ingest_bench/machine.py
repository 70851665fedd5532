"""What the ingest bench reads of processes and of the machine: CPU seconds, RSS, time spent
waiting for a CPU, the load average and how fast a core is right now (the speed probe)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["affinity", "database_backends_cpu_s", "load_average", "machine_busy_s",
           "process_cpu_s", "process_rss", "process_sched_s", "speed_probe_ms"]

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def process_rss(pid: int | None) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def process_sched_s(pid: int | None) -> tuple[float, float]:
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


def machine_busy_s() -> float:
    """CPU-seconds the whole machine spent busy (every core, every process), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


def database_backends_cpu_s(url: str | None) -> float:
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
                total += process_cpu_s(int(proc.name))
        except OSError:
            continue
    return total


def load_average() -> float:
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
def affinity(cpus: set[int] | None) -> Iterator[None]:
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
