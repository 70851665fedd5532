"""A background job that ticks in one hub process at a time: woken, or every ``interval_s``.

The job's state lives in the database (never in this process), so whichever hub process holds
the lease (:func:`cloud_hub.db.leases.hold_lease`) can run the next tick.
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
from sqlmodel import Session

from cloud_hub.db.leases import hold_lease

__all__ = ["LeasedWorker", "process_holder_id"]

log = logging.getLogger(__name__)


def process_holder_id() -> str:
    """Names this process in a lease: host, pid and a random part (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeasedWorker:
    """Runs ``tick(now)`` in a thread while this process holds the lease ``name``.

    ``tick`` returns True when it left work for the next tick (a full batch), which then runs
    soon instead of after ``interval_s``: after a pause so that the job works at most
    ``busy_share`` of the time while it catches up (the rest is left to ingest, which shares the
    process's GIL and, on SQLite, the database's write lock).
    """

    def __init__(
        self, engine: Engine, *, name: str, tick: Callable[[float], bool], interval_s: float,
        lease_ttl_s: float = 15.0, holder: str | None = None, busy_share: float = 1.0,
    ) -> None:
        if not 0 < busy_share <= 1:
            raise ValueError(f"busy_share must be in (0, 1], not {busy_share}")
        self._busy_share = busy_share
        self._engine = engine
        self.name = name
        self._tick = tick
        self._interval = interval_s
        self._ttl = max(lease_ttl_s, 3 * interval_s)
        self.holder = holder or process_holder_id()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hub-{name}", daemon=True)
        self.ticks = 0
        self.errors = 0
        self.holding = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

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
            try:
                now = time.time()
                with Session(self._engine) as session:
                    self.holding = hold_lease(session, name=self.name, holder=self.holder,
                                              now=now, ttl_s=self._ttl)
                if self.holding:
                    started = time.monotonic()
                    more = self._tick(now)
                    self.ticks += 1
                    busy = time.monotonic() - started
                    pause = min(busy * (1 / self._busy_share - 1), self._interval)
            except Exception:  # a failing tick is logged and retried; the thread goes on
                self.errors += 1
                log.exception("%s: tick failed", self.name)
                self._stop.wait(min(self._interval, 1.0))
