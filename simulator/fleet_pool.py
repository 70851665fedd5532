"""A fleet split over several processes (by default one per core), driven as one.

Each process (:mod:`simulator.fleet_worker`) runs its share of the devices, each device the
agent's own core over the light transport (:mod:`simulator.scale_fleet`); a thousand cores in
one interpreter would share one lock. The pool starts them tied to this process
(:func:`simulator.process.start_child`: nothing outlives the bench), sends each its share and
its commands, and merges their answers: connected devices, settled rollouts, injected faults'
ground truth, counters, tick lags, and at the end every device's counts and anomaly stamps.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simulator.fleet import DeviceSpec
from simulator.process import start_child
from simulator.scoring import GroundTruth

__all__ = ["FleetPool", "default_processes"]

log = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parent.parent


def default_processes() -> int:
    """One process per core."""
    return max(1, os.cpu_count() or 1)


class _Worker:
    """One ``python -m simulator.fleet_worker CONFIG`` child: JSON lines out, commands in."""

    def __init__(self, config: Path) -> None:
        self.process: subprocess.Popen[str] = start_child(
            [sys.executable, "-m", "simulator.fleet_worker", str(config)], cwd=_REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True,
                                             name=f"fleet-worker-{self.pid}")
        self._pump_thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._lines.put(json.loads(line))
            except json.JSONDecodeError:
                log.warning("fleet worker %d wrote a line that is not JSON: %.200s", self.pid,
                            line)
        self._lines.put(None)  # its stdout closed: it exited

    def read(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fields = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"fleet worker {self.pid} did not say {event!r} "
                                   f"in {timeout:g}s") from None
            if fields is None:
                self._lines.put(None)
                raise RuntimeError(f"fleet worker {self.pid} exited (code "
                                   f"{self.process.wait(10)}) before saying {event!r}")
            if fields.get("event") == event:
                return fields

    def end(self, timeout: float = 30.0) -> None:
        """Wait for the worker, told to stop; kill it when it does not exit. Close its pipes."""
        process = self.process
        try:
            if process.stdin is not None:
                process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("fleet worker %d did not exit in %.0fs; killing it", process.pid, timeout)
            process.kill()
            process.wait(10)
        self._pump_thread.join(10.0)
        if process.stdout is not None:
            process.stdout.close()

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.process.stdin.flush()


class FleetPool:
    """``devices`` split over ``processes`` fleet workers (round robin), ``shards`` threads
    each; ``auth`` gives each device its broker login (e.g. ``Broker.device_auth``)."""

    def __init__(self, *, host: str, port: int, state_root: Path, workdir: Path,
                 trust_keys: dict[str, str], devices: Sequence[DeviceSpec],
                 auth: Callable[[str], dict[str, Any]], processes: int | None = None,
                 shards: int = 1, topic_prefix: str = "edgeloop/v1",
                 overrides: dict[str, dict[str, Any]] | None = None,
                 update_steps_per_round: int | None = None) -> None:
        """``update_steps_per_round``: model-update steps each shard runs per round
        (:class:`simulator.shards.RoundBudget`; 0: no bound; None: the fleet's default)."""
        n = max(1, min(processes or default_processes(), len(devices)))
        self.processes = n
        self.device_ids = [d.device_id for d in devices]
        self._owner = {d.device_id: i % n for i, d in enumerate(devices)}
        workdir.mkdir(parents=True, exist_ok=True)
        self._configs: list[Path] = []
        for i in range(n):
            share = [d for j, d in enumerate(devices) if j % n == i]
            config = workdir / f"fleet-worker-{i}.json"
            config.write_text(json.dumps({
                "host": host, "port": port, "state_root": str(state_root),
                "trust_keys": trust_keys, "shards": shards, "topic_prefix": topic_prefix,
                "overrides": overrides or {},
                **({} if update_steps_per_round is None
                   else {"update_steps_per_round": update_steps_per_round}),
                "devices": [{"device_id": d.device_id, "profile": d.profile, "seed": d.seed,
                             "rate_hz": d.rate_hz, "history_s": d.history_s} for d in share],
                "auth": {d.device_id: auth(d.device_id) for d in share},
            }))
            os.chmod(config, 0o600)  # the devices' passwords
            self._configs.append(config)
        self._workers: list[_Worker] = []
        self.stopped = False
        self.final: dict[str, Any] | None = None

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def _ask(self, cmd: str, event: str, timeout: float,
             per_worker: Callable[[int], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        for i, worker in enumerate(self._workers):
            worker.send(cmd, **(per_worker(i) if per_worker else {}))
        return [w.read(event, timeout) for w in self._workers]

    def start(self, timeout: float = 240.0) -> dict[str, Any]:
        """Start every worker; when all said ``connected``: how many devices, in how long."""
        started = time.monotonic()
        self._workers = [_Worker(c) for c in self._configs]
        answers = [w.read("connected", timeout) for w in self._workers]
        return {"devices": sum(a["devices"] for a in answers),
                "seconds": round(time.monotonic() - started, 2),
                "seconds_per_process": [a["seconds"] for a in answers]}

    def inject(self, faults: Sequence[dict[str, Any]]) -> list[GroundTruth]:
        """Faults (device_id, kind, at, duration) into their devices' sources: ground truth."""
        shares: list[list[dict[str, Any]]] = [[] for _ in self._workers]
        for f in faults:
            shares[self._owner[f["device_id"]]].append(dict(f))
        answers = self._ask("inject", "injected", 60.0, lambda i: {"faults": shares[i]})
        return [GroundTruth(**{**t, "channels": tuple(t["channels"])})
                for a in answers for t in a["truths"]]

    def watch(self, name: str, version: int, timeout: float) -> dict[str, Any]:
        """Wait until every device runs ``name`` v``version`` or failed to: how many run it,
        the errors, every device's timeline (reported states, manifest and chunk stamps, with
        their ``time.monotonic()``), and the tick lags (ms) of every worker meanwhile."""
        answers = self._ask("watch", "settled", timeout + 60.0,
                            lambda i: {"name": name, "version": version, "timeout": timeout})
        timeline: dict[str, list[tuple[str, float]]] = {}
        for a in answers:
            timeline.update({d: [(s, t) for s, t in line] for d, line in a["timeline"].items()})
        return {"active": sum(a["active"] for a in answers),
                "errors": [e for a in answers for e in a["errors"]], "timeline": timeline,
                "tick_lags_ms": [lag for a in answers for lag in a.get("tick_lags_ms", [])]}

    def counters(self) -> dict[str, int]:
        answers = self._ask("counters", "counters", 60.0)
        return {k: sum(int(a[k]) for a in answers) for k in ("samples_generated",
                                                             "acks_received")}

    def reset_tick_lag(self) -> None:
        self._ask("reset_lag", "lag_reset", 60.0)

    def stop(self, flush_timeout: float = 30.0) -> dict[str, Any]:
        """Stop every worker (each drains its outboxes for up to ``flush_timeout``) and merge
        their last words: ``drained`` (all), ``tick_lags_ms``, per device
        ``samples_generated``, ``statuses``, ``anomaly_times`` ({(epoch, seq): stamps})."""
        if self.final is not None:
            return self.final
        self.stopped = True
        merged: dict[str, Any] = {"drained": True, "tick_lags_ms": [], "samples_generated": {},
                                  "statuses": {}, "anomaly_times": {}}
        for worker in self._workers:
            try:
                worker.send("stop", flush_timeout=flush_timeout)
            except OSError as exc:
                log.warning("fleet worker %d: cannot send stop: %s", worker.pid, exc)
        for worker in self._workers:
            try:
                last = worker.read("stopped", flush_timeout + 60.0)
            except (TimeoutError, RuntimeError) as exc:
                log.error("%s", exc)
                merged["drained"] = False
                continue
            finally:
                worker.end()
            merged["drained"] = merged["drained"] and last["drained"]
            merged["tick_lags_ms"].extend(last["tick_lags_ms"])
            for key in ("samples_generated", "statuses"):
                merged[key].update(last[key])
            for device_id, times in last["anomaly_times"].items():
                merged["anomaly_times"][device_id] = {_key(k): v for k, v in times.items()}
        self.final = merged
        return merged


def _key(text: str) -> tuple[str, int]:
    """An anomaly's (epoch, seq) from the worker's "epoch:seq"."""
    epoch, seq = text.rsplit(":", 1)
    return epoch, int(seq)
