"""What an agent process costs in memory, for ``bench/edge.py`` and ``bench/edge_daemon.py``.

- :func:`process_memory`: RSS, PSS, private and anonymous bytes of a running process
  (``/proc/PID/smaps_rollup``), its resident MB per mapping and its threads with their stacks.
- :func:`import_costs`: what each import of the agent adds, measured step by step in a fresh
  interpreter with the daemon's settings (one BLAS thread, two malloc arenas).
- :func:`wait_for_release`: the agent logs when it has released its start-up pages
  (``edge_agent/daemon/memory.py``); the benches sample its memory after that line.

RSS counts every resident page a process maps, shared library pages included; the kernel maps
cached file pages 64 KB at a time, so the same process shows several MB more when the page cache
is warm. PSS shares such pages among the processes that map them; private and anonymous memory
do not depend on the page cache at all. Report all of them, and RSS as the maximum of several runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge_agent.daemon.memory import memory_figures  # noqa: E402

__all__ = [
    "RELEASE_LINE",
    "agent_env",
    "format_import_costs",
    "import_costs",
    "process_memory",
    "wait_for_release",
]

MB = 2**20
RELEASE_LINE = re.compile(r"released [0-9.]+ MB of start-up pages")
_VMA = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def agent_env() -> dict[str, str]:
    """The environment of an agent process started by a bench: the parent's, without anything
    that would change the agent's memory (the daemon sets its own BLAS and malloc limits)."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "MALLOC_ARENA_MAX", "PYTHONOPTIMIZE", "PYTHONMALLOC"):
        env.pop(name, None)
    return env


def wait_for_release(log_file: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the agent's log says it released its start-up pages (the agent logs at INFO)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-agent exited with {proc.returncode} before settling")
        if RELEASE_LINE.search(log_file.read_text(errors="replace")):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the agent did not release its start-up pages within {timeout} s")


def process_memory(pid: int, top: int = 10) -> dict[str, Any]:
    """Memory figures of ``pid`` in MB, its largest mappings, and its threads."""
    figures = memory_figures(pid)
    if figures is None:
        raise RuntimeError(f"no /proc/{pid}/smaps_rollup")
    mappings, stacks = _mappings(pid)
    threads = _threads(pid, stacks)
    return {
        "rss_mb": round(figures.rss / MB, 1),
        "pss_mb": round(figures.pss / MB, 1),
        "private_mb": round(figures.private / MB, 1),
        "anonymous_mb": round(figures.anonymous / MB, 1),
        "file_mb": round(figures.file / MB, 1),
        "by_mapping_mb": dict(sorted(mappings.items(), key=lambda kv: -kv[1])[:top]),
        "threads": len(threads),
        "thread_stacks_kb": threads,
    }


def _mappings(pid: int) -> tuple[dict[str, float], list[tuple[int, int, int]]]:
    """Resident MB per mapped file (or [anon], [heap]), and every anonymous VMA (start, end, kB)."""
    totals: dict[str, int] = {}
    anon: list[tuple[int, int, int]] = []
    name, span = "[anon]", (0, 0)
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            match = _VMA.match(line)
            if match:
                start, end, path = match.groups()
                span = (int(start, 16), int(end, 16))
                name = Path(path).name if path.startswith("/") else (path or "[anon]")
            elif line.startswith("Rss:"):
                kb = int(line.split()[1])
                totals[name] = totals.get(name, 0) + kb
                if name == "[anon]":
                    anon.append((*span, kb))
    return {k: round(v / 1024, 1) for k, v in totals.items() if v >= 64}, anon


def _threads(pid: int, anon: list[tuple[int, int, int]]) -> dict[str, int]:
    """Each thread's name and the resident kB of the mapping that holds its stack pointer
    (``/proc/PID/task/TID/syscall``; -1 where it cannot be read)."""
    out: dict[str, int] = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        base = f"/proc/{pid}/task/{tid}"
        try:
            name = Path(f"{base}/comm").read_text().strip()
            fields = Path(f"{base}/syscall").read_text().split()
            sp = int(fields[-2], 16) if len(fields) >= 3 else 0
        except (OSError, ValueError):
            name, sp = f"tid {tid}", 0
        kb = next((rss for start, end, rss in anon if start <= sp < end), -1)
        if tid == str(pid):
            kb = _main_stack_kb(pid)
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = kb
    return out


def _main_stack_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as fh:
        in_stack = False
        for line in fh:
            if _VMA.match(line):
                in_stack = line.rstrip().endswith("[stack]")
            elif in_stack and line.startswith("Rss:"):
                return int(line.split()[1])
    return -1


_LADDER = r"""
import os, sys
def figures():  # before any import of our own: the bare interpreter's figures
    f = {}
    for line in open("/proc/self/smaps_rollup"):
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            f[key] = int(value.split()[0]) * 1024
    return {"rss": f["Rss"], "pss": f["Pss"], "anonymous": f["Anonymous"],
            "private": f["Private_Clean"] + f["Private_Dirty"], "modules": len(sys.modules),
            "threads": len(os.listdir("/proc/self/task"))}
rows = [{"step": "python", **figures()}]
import json
from edge_agent.daemon.memory import limit_malloc_arenas, limit_native_threads
limit_native_threads()
limit_malloc_arenas()
model_path = sys.argv[1]
steps = [
    ("the agent's CLI (argparse, msgspec, config)", "import edge_agent.cli"),
    ("numpy", "import numpy"),
    ("TFLite runtime", "from edge_agent.inference.runtime import load_interpreter_class\n"
                       "load_interpreter_class()"),
    ("ssl", "import ssl"),
    ("paho-mqtt (urllib.request, email, uuid...)", "import paho.mqtt.client"),
    ("sqlite3", "import sqlite3"),
    ("agent modules (messages, link, outbox...)",
     "import edge_agent.agent, edge_agent.daemon.runner"),
    ("model loaded + 100 windows",
     "import numpy as np\nfrom edge_agent.inference.runtime import TfliteModel\n"
     "m = TfliteModel(open(model_path, 'rb').read())\n"
     "x = np.zeros(m.window_size, np.float32)\nfor _ in range(100): m.reconstruct(x)"),
    ("start-up pages released", "from edge_agent.daemon.memory import release_startup_pages\n"
                                "release_startup_pages()"),
]
for label, code in steps:
    exec(code)
    rows.append({"step": label, **figures()})
print(json.dumps(rows))
"""


def import_costs(python: str, model_path: Path) -> list[dict[str, Any]]:
    """RSS/PSS/private/anonymous MB after each import step, and the step's RSS delta."""
    done = subprocess.run([python, "-c", _LADDER, str(model_path)], capture_output=True,
                          text=True, timeout=300, check=False, cwd=ROOT, env=agent_env())
    if done.returncode != 0:
        raise RuntimeError(f"import ladder failed:\n{done.stderr[-2000:]}")
    rows: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    out, previous = [], 0
    for row in rows:
        out.append({
            "step": row["step"],
            "rss_mb": round(row["rss"] / MB, 1),
            "delta_rss_mb": round((row["rss"] - previous) / MB, 1),
            "pss_mb": round(row["pss"] / MB, 1),
            "private_mb": round(row["private"] / MB, 1),
            "anonymous_mb": round(row["anonymous"] / MB, 1),
            "modules": row["modules"],
            "threads": row["threads"],
        })
        previous = row["rss"]
    return out


def format_import_costs(rows: list[dict[str, Any]]) -> str:
    header = (f"{'import step':<44}{'RSS':>7}{'+RSS':>7}{'PSS':>7}{'priv':>7}{'anon':>7}"
              f"{'mods':>6}{'thr':>5}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['step'][:43]:<44}{r['rss_mb']:>7.1f}{r['delta_rss_mb']:>7.1f}"
                     f"{r['pss_mb']:>7.1f}{r['private_mb']:>7.1f}{r['anonymous_mb']:>7.1f}"
                     f"{r['modules']:>6}{r['threads']:>5}")
    return "\n".join(lines)
