"""A background job that ticks in one hub process at a time: woken, or every ``interval_s``.

The job's state lives in the database (never in this process), so whichever hub process holds
the lease (:class:`cloud_hub.db.leases.Lease`) can run the next tick. The tick is handed the
lease and commits through it (``lease.session()``, ``lease.begin()``): a tick that stalled past
the lease's expiry, while another process took the job over, has its writes refused
(:class:`~cloud_hub.db.leases.LeaseLost`) instead of committing them over the other's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy.engine import Engine

from cloud_hub.db.leases import Lease, LeaseLost

__all__ = ["LeasedThread", "LeasedWorker", "process_holder_id"]

log = logging.getLogger(__name__)


def process_holder_id() -> str:
    """Names this process in a lease: host, pid and a random part (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeasedThread:
    """A daemon thread (``hub-{name}``) that runs :meth:`_run` and works only while this
    process holds the lease ``name``: start, wake, stop. ``stop`` gives the lease up only once
    the thread has ended, so that no work can still run under it. The lease lasts
    ``lease_ttl_s``, and at least three of the thread's ``interval_s``."""

    def __init__(self, engine: Engine, *, name: str, interval_s: float, lease_ttl_s: float,
                 holder: str | None = None) -> None:
        self.holder = holder or process_holder_id()
        self._lease = Lease(engine, name=name, holder=self.holder,
                            ttl_s=max(lease_ttl_s, 3 * interval_s))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hub-{name}", daemon=True)

    @property
    def holding(self) -> bool:
        return self._lease.held

    @property
    def lease(self) -> Lease:
        return self._lease

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # given up only once no tick can still run under it
            self._lease.release()

    def wake(self) -> None:
        """Run the next tick now instead of at its interval."""
        self._wake.set()

    def _run(self) -> None:
        raise NotImplementedError


class LeasedWorker(LeasedThread):
    """Runs ``tick(now, lease)`` in a thread while this process holds the lease ``name``.

    ``tick`` commits what it writes through ``lease`` (:meth:`Lease.session`,
    :meth:`Lease.begin`), so only while this process still holds it; a tick that finds it lost
    (:class:`LeaseLost`) is logged as a warning, counted in ``lost``, and the worker goes on
    (it ticks again once it holds the lease again).

    ``tick`` returns True when it left work for the next tick (a full batch), which then runs
    soon instead of after ``interval_s``: after a pause so that the job works at most
    ``busy_share`` of the time while it catches up (the rest is left to ingest, which shares the
    process's GIL and, on SQLite, the database's write lock).

    ``defer_while``: while it answers True (ingest has a backlog), a tick waits, up to
    ``max_defer_s`` at a time, so that the work it would do (a rollup fold, a retention
    delete) is done once the backlog is gone and ingest gets the CPU while it is behind
    (profiled on SQLite under overload: the maintenance job ~17%, its lease ~8%). The work
    waits, it is not skipped: the job catches up when the condition ends, and under a
    backlog that never ends it still ticks once per ``max_defer_s``.

    The lease is renewed when a third of its ``lease_ttl_s`` has passed since the last
    renewal, not at every tick (:class:`~cloud_hub.db.leases.Lease`).
    """

    def __init__(
        self, engine: Engine, *, name: str, tick: Callable[[float, Lease], bool],
        interval_s: float,
        lease_ttl_s: float = 15.0, holder: str | None = None, busy_share: float = 1.0,
        defer_while: Callable[[], bool] | None = None, max_defer_s: float = 60.0,
    ) -> None:
        if not 0 < busy_share <= 1:
            raise ValueError(f"busy_share must be in (0, 1], not {busy_share}")
        super().__init__(engine, name=name, interval_s=interval_s, lease_ttl_s=lease_ttl_s,
                         holder=holder)
        self._busy_share = busy_share
        self.name = name
        self._tick = tick
        self._interval = interval_s
        self._defer_while = defer_while
        self._max_defer_s = max_defer_s
        self.ticks = 0
        self.errors = 0
        self.lost = 0  # ticks whose commit found the lease taken over
        self.deferred_s = 0.0  # time ticks waited for ingest's backlog

    def _run(self) -> None:
        more = False
        pause = 0.0
        while not self._stop.is_set():
            if not more:
                self._wake.wait(self._interval)
            elif pause > 0 and self._stop.wait(pause):
                return
            self._wake.clear()
            if self._stop.is_set():
                return
            more = False
            if not self._deferred():
                return
            try:
                now = time.time()
                if self._lease.keep():
                    started = time.monotonic()
                    more = self._tick(now, self._lease)
                    self.ticks += 1
                    busy = time.monotonic() - started
                    pause = min(busy * (1 / self._busy_share - 1), self._interval)
            except LeaseLost as exc:  # another process runs the job now: not a failure
                self._lease.lost()
                self.lost += 1
                log.warning("%s: %s", self.name, exc)
            except Exception:  # a failing tick is logged and retried; the thread goes on
                self._lease.lost()  # renew first next time: the failure may have been it
                self.errors += 1
                log.exception("%s: tick failed", self.name)
                self._stop.wait(min(self._interval, 1.0))

    def _deferred(self) -> bool:
        """Wait while ``defer_while`` holds, at most ``max_defer_s``; False when stopped."""
        if self._defer_while is None or not self._defer_while():
            return True
        began = time.monotonic()
        try:
            while time.monotonic() - began < self._max_defer_s:
                if self._stop.wait(0.25):
                    return False
                if not self._defer_while():
                    break
        finally:
            self.deferred_s += time.monotonic() - began
        return True
