"""What an agent process costs in memory, for ``bench/edge.py`` and ``bench/edge_daemon.py``.

- :func:`process_memory`: RSS, PSS, private and anonymous bytes of a running process
  (``/proc/PID/smaps_rollup``), its resident MB per mapping and its threads with their stacks.
- :func:`import_costs`: what each import of the agent adds, measured step by step in a fresh
  interpreter with the daemon's settings (one BLAS thread, one malloc arena).
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

from edge_agent.daemon.memory import memory_figures

ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "RELEASE_LINE",
    "agent_env",
    "compile_agent_bytecode",
    "format_import_costs",
    "import_costs",
    "process_memory",
    "wait_for_release",
]

MB = 2**20
RELEASE_LINE = re.compile(r"released [0-9.]+ MB of start-up pages \(model (?P<model>[^;)]*)")
_VMA = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def agent_env() -> dict[str, str]:
    """The environment of an agent process started by a bench: the parent's, without anything
    that would change the agent's memory (the daemon sets its own BLAS and malloc limits)."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "MALLOC_ARENA_MAX", "PYTHONOPTIMIZE", "PYTHONMALLOC"):
        env.pop(name, None)
    return env


def compile_agent_bytecode(python: str = sys.executable) -> None:
    """Compile the agent's own modules (``edge_agent``, ``shared``) to bytecode, as ``pip install``
    does on a device (where systemd's ``ProtectSystem=strict`` forbids writing it at run time).
    A fresh clone has none, and with ``PYTHONDONTWRITEBYTECODE`` set the agent would compile its
    ~75 modules at every start: 0.6 MiB more anonymous memory, left by the compiler."""
    subprocess.run([python, "-m", "compileall", "-q", str(ROOT / "edge_agent"),
                    str(ROOT / "shared")], check=True, timeout=300, capture_output=True)


def wait_for_release(log_file: Path, proc: subprocess.Popen[bytes], timeout: float,
                     model: str | None = None) -> None:
    """Until the agent's log says it released its start-up pages (the agent logs at INFO), with
    ``model`` (e.g. ``"bench-edge v1"``) active when given: a release before the model was
    loaded does not count (under load the model can take longer than the agent's settling)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-agent exited with {proc.returncode} before settling")
        for match in RELEASE_LINE.finditer(log_file.read_text(errors="replace")):
            if model is None or match.group("model") == model:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the agent did not release its start-up pages within {timeout} s")


def process_memory(pid: int, top: int = 10) -> dict[str, Any]:
    """Memory figures of ``pid`` in MB, its largest mappings, what kind of memory it is, and its
    threads."""
    figures = memory_figures(pid)
    if figures is None:
        raise RuntimeError(f"no /proc/{pid}/smaps_rollup")
    sps = _stack_pointers(pid)
    mappings, kinds, stacks = _mappings(pid, sps)
    threads = _threads(pid, stacks)
    return {
        "rss_mb": round(figures.rss / MB, 1),
        "pss_mb": round(figures.pss / MB, 1),
        "private_mb": round(figures.private / MB, 1),
        "anonymous_mb": round(figures.anonymous / MB, 1),
        "file_mb": round(figures.file / MB, 1),
        "by_mapping_mb": dict(sorted(mappings.items(), key=lambda kv: -kv[1])[:top]),
        "by_kind_mb": kinds,
        "threads": len(threads),
        "thread_stacks_kb": threads,
    }


# What the resident pages of a process are, by the kind of mapping that holds them.
KINDS = {
    "heap": "the main malloc arena ([heap], brk)",
    "malloc_arenas": "glibc's other malloc arenas (64 MB-aligned anonymous heaps of threads)",
    "anonymous_mmaps": "other anonymous mappings: Python's object arenas, large malloc blocks, "
                       "numpy buffers, the runtime's tensors",
    "thread_stacks": "thread stacks (the main one included)",
    "library_data": "written (copied) pages of file mappings: libraries' relocated data",
    "file_pages": "clean pages of mapped files: libraries' code and read-only data",
}
_ARENA_ALIGN = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: each non-main arena is aligned to it


def _stack_pointers(pid: int) -> list[int]:
    sps = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
            if len(fields) >= 3:
                sps.append(int(fields[-2], 16))
        except (OSError, ValueError):
            continue
    return sps


def _mappings(
    pid: int, sps: list[int]
) -> tuple[dict[str, float], dict[str, float], list[tuple[int, int, int]]]:
    """Resident MB per mapped file (or [anon], [heap]); resident MB per kind (:data:`KINDS`);
    and every anonymous VMA (start, end, kB)."""
    totals: dict[str, int] = {}
    kinds = dict.fromkeys(KINDS, 0)
    anon: list[tuple[int, int, int]] = []
    name, kind, span, rss = "[anon]", "anonymous_mmaps", (0, 0), 0
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            match = _VMA.match(line)
            if match:
                start, end, path = match.groups()
                span = (int(start, 16), int(end, 16))
                name = Path(path).name if path.startswith("/") else (path or "[anon]")
                kind = _kind(path, span, sps)
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                totals[name] = totals.get(name, 0) + rss
                if kind != "file":
                    kinds[kind] += rss
                if name == "[anon]":
                    anon.append((*span, rss))
            elif kind == "file" and line.startswith("Anonymous:"):
                copied = int(line.split()[1])  # pages of the file copied when written
                kinds["library_data"] += copied
                kinds["file_pages"] += rss - copied
    return ({k: round(v / 1024, 1) for k, v in totals.items() if v >= 64},
            {k: round(v / 1024, 1) for k, v in kinds.items()}, anon)


def _kind(path: str, span: tuple[int, int], sps: list[int]) -> str:
    if path.startswith("/"):
        return "file"  # split into file_pages and library_data by its Anonymous: line
    if path == "[heap]":
        return "heap"
    if path == "[stack]" or any(span[0] <= sp < span[1] for sp in sps):
        return "thread_stacks"
    if not path and span[0] % _ARENA_ALIGN == 0 and span[1] - span[0] <= _ARENA_ALIGN:
        return "malloc_arenas"
    return "anonymous_mmaps"  # [vdso], [vvar] and the like are a few pages at most


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
    ("paho-mqtt, as the agent's link loads it", "import edge_agent.comms.mqtt"),
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
    compile_agent_bytecode(python)
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
