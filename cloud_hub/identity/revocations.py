"""Revocations whose broker step failed, finished in the background.

A revoke marks the device revoked in the registry, then deletes its credential on the broker.
When the broker does not confirm the deletion (it is away, or slow), the revoke answers 503
and the device could still connect. This process then retries the deletion itself, sooner
than the broker audit would (every ``EDGELOOP_BROKER_AUDIT_S``) and without waiting for the
operator to revoke again: after ``first_s``, then twice as long each time the broker still
does not answer, up to ``max_s``, until it confirms. Each retry judges the device again on a
fresh read (:func:`~cloud_hub.identity.audit.delete_revoked`), so a device enrolled again in
the meantime keeps its new credential. If this process stops first, the audit finishes the
revocation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RevocationRetry"]

log = logging.getLogger(__name__)


class RevocationRetry:
    """Retries ``settle`` (delete the credentials of these revoked devices, as the registry
    says now; raises while the broker does not answer) for the devices :meth:`add` names."""

    def __init__(self, settle: Callable[[list[str]], dict[str, str]], *, first_s: float = 1.0,
                 max_s: float = 30.0) -> None:
        self._settle = settle
        self._first_s, self._max_s = first_s, max_s
        self._delay = first_s
        self._due = float("inf")  # monotonic time of the next attempt
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.confirmed = 0  # revocations this process finished after their broker step failed
        self.failures = 0  # attempts the broker did not answer

    @property
    def pending(self) -> list[str]:
        """Revoked devices whose credential deletion the broker has not confirmed yet."""
        with self._lock:
            return sorted(self._pending)

    def add(self, device_id: str) -> None:
        with self._lock:
            self._pending.add(device_id)
            self._delay = self._first_s
            self._due = min(self._due, time.monotonic() + self._first_s)
        self._wake.set()
        log.warning("revoked device %s: the broker did not confirm deleting its credential; "
                    "retrying until it does", device_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hub-revocations", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"revocations_unconfirmed": len(self._pending),
                    "revocations_confirmed_late": self.confirmed}

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                wait = self._due - time.monotonic()
            if wait > 0:
                self._wake.wait(None if wait == float("inf") else wait)
                self._wake.clear()
                continue
            self._attempt()

    def _attempt(self) -> None:
        names = self.pending
        try:
            deleted = self._settle(names)
        except Exception as exc:  # the broker (or the database) is still away: later
            with self._lock:
                self.failures += 1
                self._due = time.monotonic() + self._delay
                retry_in, self._delay = self._delay, min(2 * self._delay, self._max_s)
            log.warning("revoked device(s) %s: the broker still does not confirm deleting "
                        "their credentials (%s); retrying in %.0f s", ", ".join(names), exc,
                        retry_in)
            return
        with self._lock:
            self._pending.difference_update(names)
            self.confirmed += len(names)
            self._delay = self._first_s
            self._due = time.monotonic() + self._first_s if self._pending else float("inf")
        for name in names:
            log.info("revoked device %s: %s", name, "its credential is now deleted on the broker"
                     if name in deleted else "no credential of it left on the broker")
