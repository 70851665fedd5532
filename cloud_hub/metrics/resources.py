"""What this hub process uses of its machine: CPU time, resident memory, open files, threads.

The hub's ingest is bound by its one Python process's CPU (docs/ingest-measurements.md), and
its memory must stay bounded under any load (the inbox and the Receive Maximum bound it), so
these are the first figures to watch on each process. ``GET /api/v1/metrics`` has them as
``process``, and the text format as Prometheus' standard ``process_*`` metrics
(:data:`cloud_hub.metrics.exposition.PROCESS_METRICS`). Read from ``/proc`` where there is
one; a figure the system does not give is left out.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_figures"]

_PROC = Path("/proc/self")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_figures() -> dict[str, float]:
    """This process's figures now (a few reads of /proc: microseconds)."""
    times = os.times()
    figures = {"cpu_seconds": round(times.user + times.system, 3)}
    try:
        figures["rss_bytes"] = float(int((_PROC / "statm").read_text().split()[1]) * _PAGE)
        figures["open_fds"] = float(len(os.listdir(_PROC / "fd")))
        # /proc/self/stat: the fields after the command's closing parenthesis start at the
        # state (field 3); the thread count is field 20.
        stat = (_PROC / "stat").read_text()
        figures["threads"] = float(stat[stat.rindex(")") + 2:].split()[17])
    except (OSError, IndexError, ValueError):
        pass  # no /proc: not Linux
    return figures
