"""Rollout benchmark: seconds_to_full for a ~30 KB int8 model to 1,000 devices on one mosquitto.

Also measures train_convert_seconds: training + conversion + parity of the default model on
10,000 windows. Every device is the agent's own core (:mod:`simulator.scale_device`): its own TLS
connection and credential, durable outbox, model store and trust ring, reading a simulated
server at ``--rate`` Hz. The fleet is split over ``--processes`` processes of its own (default:
one per core, :class:`simulator.fleet_pool.FleetPool`), each driving its share through epoll,
so the devices share no interpreter lock with the hub or with each other; the hub runs in this
process with its real ingest, publisher and rollout controller. Each device follows its
retained ``desired``, fetches the retained manifest and chunks, checks the signature, size and
hashes, loads the model into its own interpreter, runs it in shadow for ``--shadow-windows``
windows, swaps it in and publishes ``reported`` active. The devices' state lives under
``--state-dir`` (default: a temporary directory in /dev/shm when there is one): a thousand
devices' fsyncs on one shared disk would measure that disk, where each real device has its own
storage.

    .venv/bin/python bench/rollout.py [--devices 1000] [--rate 2] [--shadow-windows 3]

Prints a table and writes reports/bench/rollout.json. Exits 1 when the rollout did not succeed
on every device, or (``--upload raw``) when a reading was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud_hub.core.config import Settings  # noqa: E402
from cloud_hub.rollouts.actions import create_rollout, rollout_view  # noqa: E402
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget  # noqa: E402
from cloud_hub.service import Hub  # noqa: E402
from edge_agent.sources.base import Reading  # noqa: E402
from simulator.broker import Broker  # noqa: E402
from simulator.fleet import DeviceSpec  # noqa: E402
from simulator.fleet_pool import FleetPool, default_processes  # noqa: E402
from simulator.rollout_phases import summarise_steps  # noqa: E402
from simulator.scale_fleet import UPDATE_STEPS_PER_ROUND  # noqa: E402
from simulator.source import SimulatedSource  # noqa: E402

PROFILE = "server"


def recorded_readings(rows: int, rate_hz: float, devices: int = 20
                      ) -> tuple[np.ndarray, list[str]]:
    """``rows`` readings of simulated servers (the devices' own profile, seeds 0 to
    ``devices - 1``, each with its own gains) at the devices' rate, as recorded history."""
    per_device = rows // devices + 1
    parts: list[np.ndarray] = []
    channels: list[str] = []
    for seed in range(devices):
        source = SimulatedSource(profile=PROFILE, seed=seed, rate_hz=rate_hz,
                                 history_s=per_device / rate_hz, max_block=per_device + 10)
        channels = list(source.channels)
        readings: list[Reading] = []
        while len(readings) < per_device:
            block = source.read(0.0)
            if not block:
                break
            readings.extend(block)
        parts.append(np.array([r.values for r in readings], dtype=np.float32))
    return np.concatenate(parts)[:rows], channels


def train_model(hub: Hub, windows: int,
                rate_hz: float) -> tuple[tuple[str, int], float, dict[str, Any]]:
    from cloud_hub.training.artifact import TrainingSpec
    from cloud_hub.training.pipeline import run_training

    spec = TrainingSpec()
    readings, channels = recorded_readings(windows + spec.window - 1, rate_hz)
    start = time.perf_counter()
    artifact = run_training(readings, channels, spec)
    seconds = time.perf_counter() - start
    ref = hub.register(artifact, name="bench-ae", training={"devices": [], "rows": len(readings)})
    return ref, seconds, {"parity": artifact.parity.decision_agreement,
                          "quantization": artifact.parity.quantization.value}


def update_phases(timeline: dict[str, list[tuple[str, float]]],
                  started: float) -> dict[str, dict[str, float]]:
    """p50 / p99 / max seconds from the rollout's start to the first time each device reported
    each state (downloading: desired received; verifying: every chunk in; shadow: verified and
    loaded; active: swapped in)."""
    out: dict[str, dict[str, float]] = {}
    for state in ("downloading", "verifying", "shadow", "active"):
        times = [min(t for s, t in line if s == state) - started
                 for line in timeline.values() if any(s == state for s, _ in line)]
        if times:
            p50, p99, top = np.percentile(times, [50, 99, 100])
            out[state] = {"p50": round(float(p50), 2), "p99": round(float(p99), 2),
                          "max": round(float(top), 2), "devices": len(times)}
    return out


def _lag_summary(lags_ms: list[float]) -> dict[str, float | int | None]:
    if not lags_ms:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    p50, p99, top = np.percentile(lags_ms, [50, 99, 100])
    return {"n": len(lags_ms), "p50": round(float(p50), 1), "p99": round(float(p99), 1),
            "max": round(float(top), 1)}


def _cpu_seconds_of(pid: int) -> float:
    """utime + stime of another process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def readings_lost(hub: Hub, generated: dict[str, int], timeout: float = 60.0) -> int:
    """Readings the devices produced that the hub has not stored (waiting up to ``timeout``
    for the last ones to be committed)."""
    from sqlmodel import Session, select

    from cloud_hub.db.tables import Device

    deadline = time.monotonic() + timeout
    while True:
        with Session(hub.engine) as session:
            stored = {d.device_id: d.telemetry_readings for d in session.exec(select(Device))}
        lost = sum(max(0, n - stored.get(d, 0)) for d, n in generated.items())
        if lost == 0 or time.monotonic() > deadline:
            return lost
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2.0, help="readings per second per device")
    parser.add_argument("--shadow-windows", type=int, default=3)
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help="fleet processes (default: one per core)")
    parser.add_argument("--shards", type=int, default=1, help="shard threads per fleet process")
    parser.add_argument("--update-steps-per-round", type=int, default=None,
                        help="model-update steps (signature checks, stagings) a shard runs per "
                             "round (0: no bound; default: simulator.scale_fleet's)")
    parser.add_argument("--upload", choices=("raw", "anomalies"), default="anomalies",
                        help="telemetry.upload of the devices: raw streams every reading to the "
                             "in-process hub while the rollout runs; anomalies (default) measures "
                             "the rollout without that load")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=REPO / "reports/bench/rollout.json")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-rollout-"))
    shm = Path("/dev/shm")
    state_root = args.state_dir or Path(tempfile.mkdtemp(
        prefix="edgeloop-bench-rollout-devices-", dir=shm if shm.is_dir() else None))
    broker = Broker()
    # Every device's identity goes into the broker's file before it starts (one role each,
    # client id bound): adding 1,000 through $CONTROL would take minutes.
    device_ids = [f"bench-{i:04d}" for i in range(args.devices)]
    broker.add_devices(device_ids)
    mqtt_settings = broker.hub_settings("bench-hub")
    broker.start()
    # The devices' broker credentials were made above; the hub keeps only its registry.
    hub = Hub(Settings(data_dir=workdir / "hub", admin_api_key="bench-admin-key-0123456789",
                       rollout_tick_s=0.05, mqtt_dynsec=False, **mqtt_settings))
    hub.enrollment.enroll(device_ids)
    hub.start()
    fleet: FleetPool | None = None
    final: dict[str, Any] | None = None
    try:
        print(f"training the default model on {args.windows:,} windows …", flush=True)
        (name, version), train_seconds, model_info = train_model(hub, args.windows, args.rate)
        from sqlmodel import Session

        from cloud_hub.registry.lifecycle import publish_model

        with Session(hub.engine) as session:
            record = publish_model(session, name=name, version=version,
                                   releases=hub.releases)
            model_bytes = record.size_bytes
            window = int(record.manifest["input"]["window"])
        history_s = (window + 8) / args.rate  # a window's worth recorded before the rollout
        # The devices run in processes of their own: they share no interpreter lock with the
        # hub (real devices do not share a CPU with it either).
        fleet = FleetPool(
            host=broker.host, port=broker.port, state_root=state_root,
            workdir=workdir / "fleet", auth=broker.device_auth,
            trust_keys={hub.signing_key.key_id: hub.signing_key.public_b64()},
            processes=args.processes, shards=args.shards,
            update_steps_per_round=args.update_steps_per_round,
            devices=[DeviceSpec(device_id=d, profile=PROFILE, seed=i, rate_hz=args.rate,
                                history_s=history_s) for i, d in enumerate(device_ids)],
            overrides={"model": {"shadow_windows": args.shadow_windows},
                       "telemetry": {"upload": args.upload}})
        connected = fleet.start(240)
        if connected["devices"] < len(device_ids):
            raise TimeoutError(f"only {connected['devices']} of {len(device_ids)} connected")
        print(f"{len(device_ids)} devices connected over TLS in {connected['seconds']:.1f} s; "
              f"rolling out {name} v{version} ({model_bytes:,} bytes)", flush=True)
        with Session(hub.engine) as session:
            rollout = create_rollout(
                session, name=name, version=version,
                target=RolloutTarget(devices=device_ids),
                policy=RolloutPolicy(canary_size=len(device_ids), wave_size=len(device_ids),
                                     min_observation_s=0.0, max_failure_ratio=0.0,
                                     max_anomaly_rate_increase=1.0, stage_timeout_s=120.0),
            )
            rollout_id = rollout.id
        fleet.reset_tick_lag()
        cpu0 = [_cpu_seconds_of(pid) for pid in fleet.pids]
        hub_cpu0 = time.process_time()  # the hub runs in this process
        broker_cpu0 = _cpu_seconds_of(broker.pid) if broker.pid else 0.0
        ticks0 = hub.rollouts.ticks
        hub.rollouts.wake()
        started = time.monotonic()
        settled = fleet.watch(name, version, 120)
        fleet_cpu = sum(_cpu_seconds_of(pid) - c for pid, c in zip(fleet.pids, cpu0, strict=True))
        hub_cpu = time.process_time() - hub_cpu0
        broker_cpu = (_cpu_seconds_of(broker.pid) if broker.pid else 0.0) - broker_cpu0
        devices_active = max((t for line in settled["timeline"].values() for s, t in line
                              if s == "active"), default=started) - started

        def finished() -> bool:
            with Session(hub.engine) as s:
                from cloud_hub.db.registry_tables import Rollout

                r = s.get(Rollout, rollout_id)
                return r is not None and r.status in ("succeeded", "rolled_back")

        deadline = time.monotonic() + 60
        while not finished() and time.monotonic() < deadline:
            time.sleep(0.1)
        with Session(hub.engine) as session:
            from cloud_hub.db.registry_tables import Rollout

            r = session.get(Rollout, rollout_id)
            assert r is not None
            view = rollout_view(session, r, with_devices=False)
        errors = settled["errors"]
        final = fleet.stop(flush_timeout=30.0)
        lost = readings_lost(hub, final["samples_generated"]) if args.upload == "raw" else None
        lags = final["tick_lags_ms"]  # from the rollout's start to the fleet's stop
        result = {
            "devices": len(device_ids),
            "transport": broker.transport,
            "auth": broker.auth,
            "model_bytes": model_bytes,
            "seconds_to_full": view["seconds_to_full"],
            "devices_updated": view["devices_updated"],
            "rollout_status": view["status"],
            "devices_active_seconds": round(devices_active, 3),
            "devices_active": settled["active"],
            "fleet_processes": fleet.processes,
            "update_steps_per_round": (UPDATE_STEPS_PER_ROUND if args.update_steps_per_round
                                       is None else args.update_steps_per_round),
            "fleet_cpu_seconds_until_settled": round(fleet_cpu, 2),
            "hub_cpu_seconds_until_settled": round(hub_cpu, 2),
            "broker_cpu_seconds_until_settled": round(broker_cpu, 2),
            "hub_rollout_ticks": hub.rollouts.ticks - ticks0,  # until it succeeded
            "update_path": "desired -> retained manifest -> retained chunks -> signature, size, "
                           "sha256 -> interpreter -> shadow -> swap -> reported",
            "shadow_windows": args.shadow_windows,
            "rate_hz": args.rate,
            "telemetry_upload": args.upload,
            "update_phases_s": update_phases(settled["timeline"], started),
            # per device: download (desired handled -> every chunk in), verify (-> loaded in
            # shadow), shadow_swap (-> active), and their parts (simulator.rollout_phases)
            "update_steps_s": summarise_steps(settled["timeline"], started),
            "tick_lag_during_rollout_ms": _lag_summary(settled["tick_lags_ms"]),
            "device_errors": len(errors),
            "first_error": errors[0] if errors else None,
            "connect_seconds": connected["seconds"],
            "tick_lag_ms": _lag_summary(lags),  # the rollout's start to the fleet's stop
            "readings_generated": sum(final["samples_generated"].values()),
            "readings_lost": lost,
            "outboxes_drained_at_stop": final["drained"],
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "train_convert_seconds": train_seconds,
            "train_windows": args.windows,
            "model_quantization": model_info["quantization"],
            "model_parity": model_info["parity"],
        }
    finally:
        if fleet is not None and not fleet.stopped:
            fleet.stop(flush_timeout=5.0)
        hub.stop()
        broker.close()
        shutil.rmtree(state_root, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    print()
    for key, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"\nwrote {args.output}")
    ok = (result["rollout_status"] == "succeeded" and not errors and not lost
          and final["drained"])
    if not ok:
        print(f"FAILED: rollout {result['rollout_status']}, {len(errors)} device errors, "
              f"readings lost {lost}, outboxes drained {final['drained']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
