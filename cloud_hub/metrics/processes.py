"""The hub processes sharing a database: each writes its own row every ``report_s`` (a few of
its figures and the rates since its last report), so that any of them can list them all, with
the job leases each holds, behind a load balancer that would otherwise answer for only one.

A process that stops cleanly marks its row stopped; one that was killed or hangs stops writing
and is shown ``silent`` after three missed reports. Rows not written for a day are deleted by
the reporters still running. A failed write is logged and tried again at the next report: the
row is a view for people, nothing in the hub depends on it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub import __version__
from cloud_hub.db.ops_tables import HubProcessRecord, JobLease

__all__ = ["BROKER_REPORTED", "FIGURES", "PRUNE_AFTER_S", "HubProcessView", "ProcessReporter",
           "broker_figures_heard", "latest_broker_figures", "latest_credential_audit",
           "list_processes", "process_views", "unconfirmed_revocations"]

log = logging.getLogger(__name__)

# What each process reports of its metrics (GET /api/v1/metrics has them all, for itself).
FIGURES = ("messages_received", "telemetry_batches", "telemetry_readings", "duplicates",
           "dead_letters", "commit_errors", "queue_depth", "ingest_behind", "mqtt_connected",
           # the broker's credentials against the registry (cloud_hub.identity.audit), from the
           # process that ran the last audit
           "credential_audit_at", "devices_without_credential", "credentials_deleted",
           # revocations the broker did not confirm, which the process retries
           "revocations_unconfirmed")
# ... and of the broker's figures it relays (cloud_hub.metrics.broker), as broker_<key>: every
# process on one broker reports the same ones, and the console shows the freshest.
BROKER_REPORTED = ("clients_connected", "store_messages", "publish_dropped", "uptime_s")
# ... and of what it uses of its machine (cloud_hub.metrics.resources)
PROCESS_REPORTED = ("cpu_seconds", "rss_bytes")
# Counters whose rate per second between two reports is reported beside them (CPU seconds per
# second: the cores the process kept busy).
RATES = {"messages_received": "messages_per_s", "telemetry_readings": "readings_per_s",
         "cpu_seconds": "cpu_cores"}
SILENT_AFTER_REPORTS = 3
ProcessState = Literal["running", "silent", "stopped"]
PRUNE_AFTER_S = 86_400.0


class ProcessReporter:
    """Writes this process's row now and every ``report_s`` in a thread; ``stop`` marks it
    stopped. ``figures`` gives this process's metrics (:meth:`cloud_hub.service.Hub.metrics`)."""

    def __init__(self, engine: Engine, *, holder: str, client_id: str,
                 figures: Callable[[], Mapping[str, Any]], report_s: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self.holder, self.client_id = holder, client_id
        self._figures = figures
        self.report_s = report_s
        self._clock = clock
        self.started_at = clock()
        self._last: tuple[float, dict[str, float]] | None = None  # time, counters reported
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-process-report",
                                        daemon=True)
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            self.report(stopped=True)
        except Exception as exc:  # the row then turns silent, which is still true enough
            log.warning("hub processes: could not mark this process stopped (%s)", exc)

    def _run(self) -> None:
        while True:
            try:
                self.report()
                if self.failures:
                    log.info("hub processes: reporting again after %d failure(s)", self.failures)
                self.failures = 0
            except Exception as exc:
                self.failures += 1
                if self.failures == 1:
                    log.warning("hub processes: could not write this process's row (%s); "
                                "retrying every %.0fs", exc, self.report_s)
            if self._stop.wait(self.report_s):
                return

    def report(self, *, stopped: bool = False) -> None:
        """Write this process's row (and delete rows nobody wrote for a day)."""
        now = self._clock()
        metrics = self._figures()
        figures = {k: float(metrics[k]) for k in FIGURES if isinstance(metrics.get(k), int | float)}
        own = metrics.get("process") or {}
        figures.update({k: float(own[k]) for k in PROCESS_REPORTED
                        if isinstance(own.get(k), int | float)})
        broker = metrics.get("broker") or {}
        figures.update({f"broker_{k}": float(broker[k]) for k in BROKER_REPORTED
                        if isinstance(broker.get(k), int | float)})
        if self._last is not None:
            at, before = self._last
            elapsed = now - at
            for counter, rate in RATES.items():
                if elapsed > 0 and counter in figures and counter in before:
                    figures[rate] = round((figures[counter] - before[counter]) / elapsed, 2)
        self._last = (now, figures)
        with Session(self._engine) as session:
            row = session.get(HubProcessRecord, self.holder) or HubProcessRecord(
                holder=self.holder, client_id=self.client_id, host=socket.gethostname()[:255],
                pid=os.getpid(), version=__version__, started_at=self.started_at,
                seen_at=now, report_s=self.report_s)
            row.seen_at, row.figures = now, figures
            row.stopped_at = now if stopped else None
            session.add(row)
            session.exec(delete(HubProcessRecord)
                         .where(col(HubProcessRecord.seen_at) < now - PRUNE_AFTER_S))
            session.commit()


@dataclass(frozen=True)
class HubProcessView:
    record: HubProcessRecord
    state: ProcessState
    leases: list[str]


def list_processes(session: Session, *, now: float) -> list[HubProcessView]:
    """Every hub process that reported within the last day, running ones first."""
    rows = session.exec(select(HubProcessRecord).order_by(col(HubProcessRecord.started_at)))
    order = {"running": 0, "silent": 1, "stopped": 2}
    return sorted(process_views(session, list(rows), now=now), key=lambda v: order[v.state])


def process_views(session: Session, rows: Sequence[HubProcessRecord], *, now: float
                  ) -> list[HubProcessView]:
    """``rows`` with their state and the job leases each holds now (from ``job_leases``,
    the table that decides)."""
    held: dict[str, list[str]] = {}
    for lease in session.exec(select(JobLease).where(col(JobLease.expires_at) > now)
                              .order_by(col(JobLease.name))):
        held.setdefault(lease.holder, []).append(lease.name)
    views = []
    for row in rows:
        state: ProcessState
        if row.stopped_at is not None:
            state = "stopped"
        elif now - row.seen_at > SILENT_AFTER_REPORTS * row.report_s:
            state = "silent"
        else:
            state = "running"
        views.append(HubProcessView(row, state, held.get(row.holder, [])))
    return views


def broker_figures_heard(state: str, seen_at: float, figures: Mapping[str, float]
                        ) -> dict[str, float] | None:
    """The broker's figures in one process's report, and when the broker started (None: the
    process is not running, or had heard none)."""
    if state != "running" or "broker_uptime_s" not in figures:
        return None
    seen = {k: figures[f"broker_{k}"] for k in BROKER_REPORTED if f"broker_{k}" in figures}
    seen["started_at"] = seen_at - seen["uptime_s"]
    return seen


def latest_credential_audit(views: Sequence[HubProcessView]) -> dict[str, float] | None:
    """The figures of the last audit of the broker's credentials, from whichever process ran
    it (one at a time, under a lease; None: no process has run one)."""
    audits = [v.record.figures for v in views
              if (v.record.figures or {}).get("credential_audit_at")]
    return max(audits, key=lambda f: f["credential_audit_at"]) if audits else None


def unconfirmed_revocations(views: Sequence[HubProcessView]) -> int:
    """Revocations the broker has not confirmed, which the processes that took them still
    retry (those of a stopped process are the audit's to finish)."""
    return sum(int((v.record.figures or {}).get("revocations_unconfirmed") or 0)
               for v in views if v.state != "stopped")


def latest_broker_figures(views: Sequence[HubProcessView]) -> dict[str, float] | None:
    """The broker's figures as the running process that reported last heard them, and when
    the broker started (None: no running process has heard any)."""
    for v in sorted(views, key=lambda v: v.record.seen_at, reverse=True):
        seen = broker_figures_heard(v.state, v.record.seen_at, v.record.figures or {})
        if seen is not None:
            return seen
    return None
