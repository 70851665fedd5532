"""Process health figures for the heartbeat, read from /proc without extra dependencies."""

from __future__ import annotations

import os
import resource

__all__ = ["cpu_seconds", "rss_bytes"]


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), in bytes; 0 if unknown."""
    path = f"/proc/{pid or os.getpid()}/status"
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if pid is None:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return 0


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process so far."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
