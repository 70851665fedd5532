"""Telemetry floods for the ingest benchmark: light publisher processes that offer a set rate.

Each publisher is a process of its own (so the hub under test never shares an interpreter with
its load) holding one MQTT 5 connection over the broker's TLS socket, with the identity the
harness issued it, that publishes valid QoS 1 telemetry for a share of the devices: every
device has its own stream epoch and numbers its batches from 0, as an agent does.

The load stands in for devices that in real life are not on the hub's machine, so it must take
as little of that machine as it can. No paho here: payloads are pre-encoded JSON with the seq
and timestamps put in, PUBLISH packets are built with ``struct`` and written a window's worth
at a time, PUBACKs are read in bulk (:mod:`simulator.mqtt_wire`). A publisher keeps its own
window of unacknowledged publishes (no more than the broker's Receive Maximum) and offers
``rate`` messages a second, or as many as the broker takes when the rate is 0. The rate can be
changed while it runs (:meth:`Publishers.set_rate`), and what the broker has acknowledged so far
is readable at any time (:meth:`Publishers.acknowledged`), so a bench can hold the hub's
backlog steady.

What it reports is exact: the seqs the broker acknowledged (each one a hub must store exactly
once), those it refused (a PUBACK with a failure reason), and those sent on a connection that
broke before their PUBACK came (in doubt: the hub may or may not get them). A broken or refused
connection is an error in the report, never a count silently short.

This module starts and stops the processes (:class:`Publishers`); one publisher's loop is
:mod:`simulator.flood_publisher`, its devices' payloads :mod:`simulator.flood_stream`, the plan
and the report :mod:`simulator.flood_plan`.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from simulator.flood_plan import FloodPlan, FloodReport
from simulator.flood_publisher import publisher_main

# The plan and the report are what Publishers takes and returns, so they are offered with it;
# they live in simulator.flood_plan because the publisher processes build reports too.
__all__ = ["FloodPlan", "FloodReport", "Publishers"]


class Publishers:
    """``plan.processes`` publisher processes: ``start()``, ``set_rate()``, ``stop()``."""

    def __init__(self, plan: FloodPlan, connect: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.plan = plan
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        devices = plan.device_ids()
        n = max(1, plan.processes)
        self._n = n
        shares = [devices[i::n] for i in range(n)]
        connects = connect if isinstance(connect, list) else [
            {**connect, "client_id": f"{connect.get('client_id', 'flood')}-{i}"}
            for i in range(n)]
        self._pipes: list[Any] = []
        self._started: list[Any] = []
        self._rates = [ctx.Value("d", plan.rate / n, lock=False) for _ in range(n)]
        # Per process: [acknowledged, sent] so far, written by it a few times a second.
        self._progress = [ctx.Array("q", 2, lock=False) for _ in range(n)]
        self._reports: list[FloodReport | None] = [None] * n
        self.procs: list[mp.process.BaseProcess] = []
        for i, share in enumerate(shares):
            receive, send = ctx.Pipe(duplex=False)
            started = ctx.Event()
            proc = ctx.Process(
                target=publisher_main, name=f"flood-{i}", daemon=True,
                args=(plan, share, connects[i], self._rates[i], self._progress[i], self._stop,
                      started, send, i))
            self._pipes.append(receive)
            self._started.append(started)
            self.procs.append(proc)

    def start(self, timeout: float = 60.0) -> None:
        """Start every publisher; raises RuntimeError (with the publisher's reason, e.g. the
        broker refusing its credential) when one does not get connected."""
        for proc in self.procs:
            proc.start()
        deadline = time.monotonic() + timeout
        for i, (started, proc) in enumerate(zip(self._started, self.procs, strict=True)):
            while not started.wait(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    why = self._take_report(i, 2.0)
                    reason = "; ".join(why.errors) if why else "no reason given"
                    self.stop()
                    raise RuntimeError(f"publisher {proc.name} did not start: {reason}")

    def set_rate(self, rate: float) -> None:
        """Offer ``rate`` messages a second in total from now on (0: as fast as acknowledged)."""
        for value in self._rates:
            value.value = rate / self._n

    def acknowledged(self) -> int:
        """Publishes the broker has acknowledged so far, all publishers (a few tenths of a
        second behind)."""
        return sum(self.acknowledged_each())

    def acknowledged_each(self) -> list[int]:
        """As :meth:`acknowledged`, per publisher process (each has its share of the
        devices): on a loaded machine one may start publishing well after the others."""
        return [int(p[0]) for p in self._progress]

    def sent(self) -> int:
        """Publishes sent so far, acknowledged or not (as :meth:`acknowledged`, behind)."""
        return sum(int(p[1]) for p in self._progress)

    def _take_report(self, i: int, timeout: float) -> FloodReport | None:
        if self._reports[i] is None and self._pipes[i].poll(timeout):
            self._reports[i] = self._pipes[i].recv()
        return self._reports[i]

    def stop(self, timeout: float = 180.0) -> FloodReport:
        """Stop publishing; returns what the broker acknowledged, all publishers merged."""
        self._stop.set()
        merged = FloodReport(readings_per_message=self.plan.readings)
        for i, proc in enumerate(self.procs):
            if proc.pid is None:
                continue
            report = self._take_report(i, timeout)
            if report is not None:
                merged.merge(report)
            else:
                merged.errors.append(f"publisher {proc.name} sent no report")
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        return merged

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]
