"""Fleet scale run: a thousand devices running the agent's core against a real hub, measured.

Used by ``bench/fleet.py``. The devices (:mod:`simulator.scale_device`, each an
:class:`~edge_agent.core.DeviceCore` over TLS with its own credential, split over one process
per core by :class:`~simulator.fleet_pool.FleetPool`) stream their recorded
history, the hub trains a model on some of them, publishes it and rolls it out: every device
follows its ``desired``, fetches the retained manifest and chunks, checks the signature, size
and hashes, runs it in shadow, swaps it in and reports it. Then the fleet runs for the measured
period with faults injected on a share of the devices. Everything reported is counted from what
the sources produced and what the hub's REST API says it stored; CPU time, the cost of the
acknowledgements and the latency's stages are worked out by :mod:`simulator.scale_measures`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from cloud_hub.cli.client import HubClient
from shared.topics import DeviceTopic, TopicAccess
from simulator.broker import Broker
from simulator.enroll import enroll_many
from simulator.fleet import DeviceSpec
from simulator.fleet_pool import FleetPool
from simulator.hub_process import HubProcess
from simulator.loop import LoopError, publish_model, settled_rollout, train_model
from simulator.process import start_child
from simulator.profiles import PROFILES
from simulator.rollout_phases import summarise_steps
from simulator.scale_measures import (
    ack_cost,
    ack_totals,
    cpu_seconds_of,
    own_cpu_seconds,
    rounded_percentile,
    stage_breakdown,
)
from simulator.scoring import Event, GroundTruth, latency_summary, score_detections

__all__ = ["ScaleOptions", "run_scale"]

log = logging.getLogger(__name__)


@dataclass
class ScaleOptions:
    devices: int = 1000
    duration_s: float = 60.0
    rate_hz: float = 1.0
    profile: str = "server"
    history_s: float = 240.0  # recorded normal operation each device uploads first
    train_devices: int = 50
    fault_share: float = 0.1  # devices that get one fault in the measured period
    fault_kinds: tuple[str, ...] = ("step", "spike", "multi", "noise")
    fault_duration_s: float = 20.0
    processes: int | None = None  # fleet processes; None: one per core
    shards: int = 1  # shard threads per fleet process
    # model-update steps a shard runs per round (simulator.shards.RoundBudget; 0: no bound;
    # None: simulator.scale_fleet's default)
    update_steps_per_round: int | None = None
    seed: int = 0
    spec: dict[str, Any] = field(default_factory=lambda: {
        "family": "dense_ae", "window": 16, "hidden": 64, "latent": 16, "epochs": 20,
        "threshold_quantile": 0.999, "threshold_factor": 2.0, "quantization": "int8",
    })


def run_scale(opts: ScaleOptions, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    say: Callable[[str], None] = console.print
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-fleet-"))
    # The devices' state (outboxes, model stores) on tmpfs when there is one: a thousand
    # devices' fsyncs and WAL checkpoints on one shared disk would measure that disk (each real
    # device has its own storage), and stall the shard threads behind it.
    shm = Path("/dev/shm")
    device_root = Path(tempfile.mkdtemp(prefix="edgeloop-fleet-devices-",
                                        dir=shm if shm.is_dir() else None))
    broker = Broker(workdir=workdir / "mosquitto")
    hub: HubProcess | None = None
    client: HubClient | None = None
    fleet: FleetPool | None = None
    device_ids = [f"{opts.profile}-{i:04d}" for i in range(opts.devices)]
    try:
        # Every device's identity goes into the broker's file before it starts: adding a
        # thousand through $CONTROL would take minutes (the plugin rewrites its file each time).
        broker.add_devices(device_ids)
        broker.start()
        # The devices' broker credentials were made above; the hub keeps only its registry.
        hub = HubProcess(workdir / "hub", mqtt_port=broker.port,
                         extra_env={**broker.hub_env("edgeloop-hub"),
                                    "EDGELOOP_MQTT_DYNSEC": "false"}).start()
        client = HubClient(hub.url, hub.admin_api_key, timeout=120.0)
        key = client.get("/signing-key")
        say(f"broker :{broker.port} ({broker.transport}, {broker.auth}), hub {hub.url}")
        enroll_many(client, device_ids, workdir / "bundles")  # only enrolled devices may send

        fleet = FleetPool(
            host=broker.host, port=broker.port, auth=broker.device_auth,
            state_root=device_root, workdir=workdir / "fleet",
            trust_keys={key["key_id"]: key["public_key"]}, processes=opts.processes,
            shards=opts.shards, update_steps_per_round=opts.update_steps_per_round,
            devices=[DeviceSpec(device_id=device_id, profile=opts.profile,
                                seed=opts.seed * 100_000 + i, rate_hz=opts.rate_hz,
                                history_s=opts.history_s)
                     for i, device_id in enumerate(device_ids)])
        up = fleet.start()["devices"]
        say(f"{up}/{opts.devices} devices connected, each with its own MQTT session, in "
            f"{fleet.processes} fleet processes")
        if up < opts.devices:
            raise LoopError(f"only {up} of {opts.devices} devices connected")

        train_ids = device_ids[: opts.train_devices]
        need = int(opts.history_s * opts.rate_hz)
        deadline = time.monotonic() + 300.0
        while True:
            stored = {r["device_id"]: r["readings"] for r in client.get_all("/telemetry/summary")}
            if all(stored.get(d, 0) >= need for d in train_ids):
                break
            if time.monotonic() > deadline:
                raise LoopError("the hub did not receive the training devices' history in 300s")
            time.sleep(1.0)
        ref = train_model(client, console, name=f"{opts.profile}-fleet", devices=train_ids,
                          until=time.time(), spec=opts.spec)
        model = publish_model(client, ref, say)
        rollout = roll_out_to_fleet(client, fleet, ref, say)
        window = int(client.get(f"/models/{ref[0]}/{ref[1]}")["manifest"]["input"]["window"])

        rng = np.random.default_rng(opts.seed)
        measured_from = time.time() + 1.0
        faulty = rng.choice(opts.devices, size=int(opts.devices * opts.fault_share),
                            replace=False)
        window_s = window / opts.rate_hz
        latest = max(opts.duration_s - opts.fault_duration_s - window_s, 2.0)
        faults: list[dict[str, Any]] = []
        for n, i in enumerate(sorted(int(x) for x in faulty)):
            kind = opts.fault_kinds[n % len(opts.fault_kinds)]
            faults.append({"device_id": device_ids[i], "kind": kind,
                           "at": measured_from + window_s + float(rng.uniform(0.0, latest)),
                           "duration": (opts.fault_duration_s if kind != "spike"
                                        else 3.0 / opts.rate_hz)})
        truths: list[GroundTruth] = fleet.inject(faults)

        watch = AnomalyWatch(broker)
        cpu_self0, cpu_hub0, cpu_broker0 = (own_cpu_seconds(), cpu_seconds_of(hub.pid),
                                            cpu_seconds_of(broker.pid))
        cpu_fleet0 = [cpu_seconds_of(pid) for pid in fleet.pids]
        counters0 = fleet.counters()
        hub0, devices0 = client.get("/metrics"), ack_totals(counters0)
        generated0 = counters0["samples_generated"]
        fleet.reset_tick_lag()  # the backlog and the model loading are behind us
        say(f"measuring {opts.duration_s:g} s with {len(truths)} faults injected …")
        time.sleep(max(0.0, measured_from + opts.duration_s - time.time()))
        fleet_cpu = [round(cpu_seconds_of(pid) - c0, 2)
                     for pid, c0 in zip(fleet.pids, cpu_fleet0, strict=True)]
        cpu = {
            "fleet_s": round(sum(fleet_cpu), 2),
            "bench_s": round(own_cpu_seconds() - cpu_self0, 2),
            "hub_s": round(cpu_seconds_of(hub.pid) - cpu_hub0, 2),
            "broker_s": round(cpu_seconds_of(broker.pid) - cpu_broker0, 2),
        }
        counters1 = fleet.counters()
        generated_in_period = counters1["samples_generated"] - generated0
        acks = ack_cost(hub0, client.get("/metrics"), devices0, ack_totals(counters1),
                        devices=opts.devices, seconds=opts.duration_s)
        final = fleet.stop()
        drained = final["drained"]
        lags_ms = final["tick_lags_ms"]  # the measured period's (the stop stops them)
        generated = final["samples_generated"]
        deadline = time.monotonic() + 120.0
        while True:
            stored = {r["device_id"]: r["readings"] for r in client.get_all("/telemetry/summary")}
            if all(stored.get(d, 0) >= n for d, n in generated.items()):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        watched = watch.close()
        rows = client.get_all("/anomalies", limit=10_000)
        events = [Event.from_api(r) for r in rows]
        score = score_detections(truths, events)
        true_events = [e for e in events
                       if any(t.device_id == e.device_id and t.overlaps(e.ts_start, e.ts_end)
                              for t in truths)]
        window_to_commit = [(e.stored_at - e.ts_end) * 1000.0 for e in true_events
                            if e.stored_at is not None]
        # Where that time goes: on the device (the window's last reading due -> detected) and
        # after it (outbox, MQTT, the hub's ingest and commit).
        true_keys = {(e.device_id, e.seq) for e in true_events}
        true_rows = [r for r in rows if (r["device_id"], r["seq"]) in true_keys
                     and r.get("detected_at") is not None and r.get("stored_at") is not None]
        window_to_detected = [(r["detected_at"] - r["ts_end"]) * 1000.0 for r in true_rows]
        detected_to_commit = [(r["stored_at"] - r["detected_at"]) * 1000.0 for r in true_rows]
        stages = stage_breakdown(true_rows, final["anomaly_times"], watched)
        statuses = final["statuses"]
        raised = sum(s["anomalies_raised"] for s in statuses.values())
        total_generated = sum(generated.values())
        total_stored = sum(stored.get(d, 0) for d in generated)
        return {
            "devices": opts.devices,
            "transport": broker.transport,
            "auth": broker.auth,
            "duration_s": opts.duration_s,
            "rate_hz": opts.rate_hz,
            "channels": _channels(opts.profile),
            "profile": opts.profile,
            "readings_generated": total_generated,
            "readings_generated_in_period": generated_in_period,
            "readings_stored": total_stored,
            "lost": total_generated - total_stored,
            "anomalies_raised": raised,
            "anomalies_stored": len(events),
            "detection_latency_ms_p99": rounded_percentile(window_to_commit, 99),
            "detection_latency_ms": {
                "window_end_to_commit": {"n": len(window_to_commit),
                                         "p50": rounded_percentile(window_to_commit, 50),
                                         "p95": rounded_percentile(window_to_commit, 95),
                                         "p99": rounded_percentile(window_to_commit, 99),
                                         "max": rounded_percentile(window_to_commit, 100)},
                "window_end_to_detected": {"p50": rounded_percentile(window_to_detected, 50),
                                           "p99": rounded_percentile(window_to_detected, 99),
                                           "max": rounded_percentile(window_to_detected, 100)},
                "detected_to_commit": {"p50": rounded_percentile(detected_to_commit, 50),
                                       "p99": rounded_percentile(detected_to_commit, 99),
                                       "max": rounded_percentile(detected_to_commit, 100)},
                "fault_start_to_commit": latency_summary(score.latencies_ms),
            },
            "detection_latency_stages_ms": stages,
            "faults_injected": score.faults_injected,
            "faults_detected": score.faults_detected,
            "false_alarms": score.false_alarms,
            "precision": round(score.precision, 4),
            "recall": round(score.recall, 4),
            "cpu_time_s": cpu,
            "fleet_processes": fleet.processes,
            "fleet_process_cpu_s": fleet_cpu,
            "acks": acks,
            "cpu_cores_used": round(sum(cpu.values()) / opts.duration_s, 3),
            "tick_lag_ms": {"n": len(lags_ms), "p50": rounded_percentile(lags_ms, 50),
                            "p99": rounded_percentile(lags_ms, 99),
                            "max": rounded_percentile(lags_ms, 100)},
            "max_tick_lag_s": round(max(lags_ms, default=0.0) / 1000.0, 3),
            "outboxes_drained_at_stop": drained,
            "drops": sum(s["drops"] for s in statuses.values()),
            "reconnects": sum(s["reconnects"] for s in statuses.values()),
            "model": model,
            "rollout": rollout,
            "hub_stored_at": "stamped right before the ingest transaction's commit (its last "
                             "statement); the commit itself is after it",
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        if fleet is not None and not fleet.stopped:
            fleet.stop(flush_timeout=5.0)
        if client is not None:
            client.close()
        if hub is not None:
            hub.stop()
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(device_root, ignore_errors=True)


def roll_out_to_fleet(client: HubClient, fleet: FleetPool, ref: tuple[str, int],
                      say: Callable[[str], None], timeout: float = 180.0) -> dict[str, Any]:
    """A rollout to every device in one wave, through the real update path; how long until
    every device ran the model (the last device's ``active``, seen by the devices) and what the
    hub recorded."""
    name, version = ref
    devices = fleet.device_ids
    started = time.monotonic()
    rollout = client.post("/rollouts", {
        "model": {"name": name, "version": version},
        "target": {"devices": devices, "percent": 100},
        "policy": {"canary_size": len(devices), "wave_size": len(devices),
                   "min_observation_s": 0.0, "max_failure_ratio": 0.0,
                   "stage_timeout_s": timeout},
    })
    settled = fleet.watch(name, version, timeout)
    running = settled["active"]
    if running < len(devices):
        raise LoopError(f"rollout: {running}/{len(devices)} devices run {name} "
                        f"v{version} after {timeout:g}s; errors {settled['errors'][:5]}")
    seconds = max((t for line in settled["timeline"].values() for s, t in line
                   if s == "active"), default=started) - started
    final = settled_rollout(client, rollout["id"])
    say(f"[bold]rollout[/] {name} v{version} active on {running} devices in {seconds:.1f} s "
        f"(desired → manifest → chunks → signature → shadow → swap → reported); hub: "
        f"{final.get('status')}, seconds_to_full {final.get('seconds_to_full')}")
    lags = settled["tick_lags_ms"]
    return {"devices_updated": running, "seconds_to_all_active": round(seconds, 3),
            "hub_status": final.get("status"), "hub_seconds_to_full": final.get("seconds_to_full"),
            "update_steps_s": summarise_steps(settled["timeline"], started),
            "tick_lag_ms": {"n": len(lags), "p50": rounded_percentile(lags, 50),
                            "p99": rounded_percentile(lags, 99),
                            "max": max(lags, default=None)}}


def _channels(profile: str) -> int:
    return len(PROFILES[profile].channel_names)


class AnomalyWatch:
    """``simulator.anomaly_watch`` in a process of its own, with a read-only identity: when the
    broker delivered each anomaly to a subscriber (the hub gets it at the same moment)."""

    def __init__(self, broker: Broker, timeout: float = 10.0) -> None:
        credential = broker.add_client("fleet-bench-anomaly-watch", TopicAccess(
            publish=(), subscribe=(broker.topics.all_devices(DeviceTopic.ANOMALIES),)))
        env = {**os.environ, "EDGELOOP_WATCH_PASSWORD": credential.password or ""}
        self.seen: dict[tuple[str, str, int], float] = {}
        self._proc: subprocess.Popen[str] = start_child(  # tied to this process
            [sys.executable, "-m", "simulator.anomaly_watch", broker.host, str(broker.port),
             broker.topics.prefix, credential.username, str(broker.ca_file or "")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            cwd=Path(__file__).resolve().parent.parent, text=True)
        self._subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="anomaly-watch", daemon=True)
        self._reader.start()
        if not self._subscribed.wait(timeout):
            log.warning("anomaly watch: not subscribed after %.0f s; the broker stage of the "
                        "breakdown will be missing", timeout)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            record = json.loads(line)
            if record.get("subscribed"):
                self._subscribed.set()
            else:
                key = (record["device_id"], record["epoch"], int(record["seq"]))
                self.seen.setdefault(key, float(record["at"]))

    def close(self, timeout: float = 10.0) -> dict[tuple[str, str, int], float]:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout)
        return dict(self.seen)
