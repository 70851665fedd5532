"""Keeping the daemon's resident memory small.

- :func:`limit_native_threads`: one BLAS thread, set before numpy loads (the agent multiplies
  256-value windows; a BLAS pool would be one more thread with its own stack and buffers).
- :func:`limit_malloc_arenas`: one malloc arena for the agent's few threads;
  :func:`malloc_arenas` reads back how many there are.
- :func:`release_startup_pages`: once the agent runs, give back what only start-up needed: free
  heap pages (``malloc_trim``) and the clean pages of shared libraries that were mapped while
  they were loaded and initialised (most of an 18 MB TFLite library, numpy's, libpython's). The
  pages stay in the page cache, so nothing is read again from disk; the ones the agent still uses
  come back into its resident set on their next use. This makes the resident size the working
  set instead of a trace of start-up, which varies with the page cache (the kernel maps clean
  file pages 64 KB at a time when they are cached).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass

__all__ = [
    "MemoryFigures",
    "limit_malloc_arenas",
    "limit_native_threads",
    "malloc_arenas",
    "memory_figures",
    "release_startup_pages",
]

log = logging.getLogger(__name__)
_M_ARENA_MAX = -8  # glibc's mallopt() parameter number
_MADV_DONTNEED = 4
_NATIVE_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_VMA = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def limit_native_threads(threads: int = 1) -> None:
    """Cap BLAS/OpenMP thread pools; only works before numpy is imported. The operator's
    settings win."""
    for name in _NATIVE_THREAD_VARS:
        os.environ.setdefault(name, str(threads))


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """Cap glibc's malloc arenas before the agent starts its threads.

    glibc gives each thread that allocates its own arena, up to 8 per core, and every arena keeps
    freed pages of its own. The agent's threads allocate little, and mostly under the GIL, so one
    arena is enough: two left ~0.9 MiB in the second arena and 0.2 MiB more resident in a soak
    (``bench/edge.py``); no cap at all, about 1 MB more. ``MALLOC_ARENA_MAX`` set by the operator
    wins. Returns whether the cap is in place; elsewhere than glibc this does nothing."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return True
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


@dataclass(frozen=True)
class MemoryFigures:
    """A process's memory from ``/proc/PID/smaps_rollup``, in bytes.

    ``rss`` counts every resident page mapped, shared library pages included; ``pss`` divides
    shared pages among the processes that map them; ``private`` is what only this process uses;
    ``anonymous`` is heap, stacks and other memory that no file backs (what swap-less devices
    cannot reclaim)."""

    rss: int
    pss: int
    private: int
    anonymous: int
    file: int  # rss - anonymous: pages of mapped files (libraries, the outbox's -shm)


def memory_figures(pid: int | None = None) -> MemoryFigures | None:
    """This process's (or ``pid``'s) figures; None where smaps_rollup is not available."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid or 'self'}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    fields[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    rss, anonymous = fields.get("Rss", 0), fields.get("Anonymous", 0)
    return MemoryFigures(
        rss=rss,
        pss=fields.get("Pss", 0),
        private=fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        anonymous=anonymous,
        file=rss - anonymous,
    )


def release_startup_pages() -> int:
    """Return free heap to the system and unmap the clean pages of read-only file mappings.

    Only mappings without write permission and without a single private (copied-on-write) page
    are touched, so no data can be lost: ``MADV_DONTNEED`` on them only drops page-table entries,
    and the next access maps the same page again from the page cache. Returns the bytes by which
    the resident set shrank (0 where this is not Linux with glibc)."""
    libc = _libc()
    if libc is None:
        return 0
    before = memory_figures()
    libc.malloc_trim(0)
    for start, end in _clean_readonly_file_mappings():
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED):
            log.debug("madvise(%x-%x) failed: errno %d", start, end, ctypes.get_errno())
    after = memory_figures()
    if before is None or after is None:
        return 0
    return max(0, before.rss - after.rss)


def _clean_readonly_file_mappings() -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                match = _VMA.match(line)
                if match:
                    start, end, perms, path = match.groups()
                    readonly_file = path.startswith("/") and "w" not in perms
                    current = (int(start, 16), int(end, 16)) if readonly_file else None
                elif current is not None and line.startswith("Anonymous:"):
                    if int(line.split()[1]) == 0:
                        ranges.append(current)
                    current = None
    except OSError as exc:
        log.debug("cannot read /proc/self/smaps: %s", exc)
    return ranges


def malloc_arenas() -> int | None:
    """How many malloc arenas this process has now (glibc's ``malloc_info``); None elsewhere."""
    libc = _libc()
    if libc is None:
        return None
    buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
    try:
        stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    except AttributeError:
        return None
    if not stream:
        return None
    try:
        libc.malloc_info(0, stream)
    finally:
        libc.fclose(stream)
    try:
        report = ctypes.string_at(buffer, size.value) if buffer.value else b""
    finally:
        libc.free(buffer)
    return report.count(b"<heap nr=")


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them
        libc.mallopt, libc.malloc_trim, libc.madvise  # noqa: B018 (glibc has all three)
    except (OSError, AttributeError) as exc:  # not glibc (musl has no mallopt)
        log.debug("glibc memory calls are not available: %s", exc)
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc
