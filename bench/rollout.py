"""Rollout benchmark: seconds_to_full for a ~30 KB int8 model to 1,000 devices on one mosquitto.

Also measures train_convert_seconds: training + conversion + parity of the default model on
10,000 windows. Every device is the agent's own core (:mod:`simulator.scale_fleet`): its own TLS
connection and credential, durable outbox, model store and trust ring, reading a simulated
server at ``--rate`` Hz; a few shard threads drive them all through epoll. Each one follows its
retained ``desired``, fetches the retained manifest and chunks, checks the signature, size and
hashes, loads the model into its own interpreter, runs it in shadow for ``--shadow-windows``
windows, swaps it in and publishes ``reported`` active. The hub runs in-process with its real
ingest, publisher and rollout controller. The devices' state lives under ``--state-dir``
(default: a temporary directory in /dev/shm when there is one): a thousand devices' fsyncs on
one shared disk would measure that disk, where each real device has its own storage.

    .venv/bin/python bench/rollout.py [--devices 1000] [--skip-training]

Prints a table and writes reports/bench/rollout.json.
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
from shared.messages import ModelState  # noqa: E402
from simulator.broker import Broker  # noqa: E402
from simulator.fleet import DeviceSpec  # noqa: E402
from simulator.scale_fleet import ScaleFleet  # noqa: E402
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=5.0, help="readings per second per device")
    parser.add_argument("--shadow-windows", type=int, default=5)
    parser.add_argument("--shards", type=int, default=4)
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
    fleet: ScaleFleet | None = None
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
        fleet = ScaleFleet(
            mqtt_host=broker.host, mqtt_port=broker.port, mqtt_auth=broker.device_auth,
            state_root=state_root, shards=args.shards,
            trust_keys={hub.signing_key.key_id: hub.signing_key.public_b64()},
            overrides={"model": {"shadow_windows": args.shadow_windows},
                       "telemetry": {"batch_max_age_s": 1.0}})
        history_s = (window + 8) / args.rate  # a window's worth recorded before the rollout
        for i, device_id in enumerate(device_ids):
            fleet.add(DeviceSpec(device_id=device_id, profile=PROFILE, seed=i,
                                 rate_hz=args.rate, history_s=history_s))
        connect_started = time.monotonic()
        fleet.start()
        if fleet.wait_connected(120) < len(device_ids):
            raise TimeoutError(f"only {fleet.connected()} of {len(device_ids)} devices connected")
        connect_seconds = time.monotonic() - connect_started
        print(f"{len(device_ids)} devices connected over TLS in {connect_seconds:.1f} s; rolling "
              f"out {name} v{version} ({model_bytes:,} bytes)", flush=True)
        with Session(hub.engine) as session:
            rollout = create_rollout(
                session, name=name, version=version,
                target=RolloutTarget(devices=device_ids),
                policy=RolloutPolicy(canary_size=len(device_ids), wave_size=len(device_ids),
                                     min_observation_s=0.0, max_failure_ratio=0.0,
                                     max_anomaly_rate_increase=1.0, stage_timeout_s=120.0),
            )
            rollout_id = rollout.id
        hub.rollouts.wake()
        started = time.monotonic()
        devices = list(fleet.devices.values())

        def active() -> int:
            return sum(1 for d in devices if d.core.detector.active is not None
                       and d.core.detector.active.manifest.version == version)

        def settled() -> bool:
            return all((d.core.detector.active is not None
                        and d.core.detector.active.manifest.version == version)
                       or d.core.updater.state is ModelState.FAILED for d in devices)

        fleet.wait_until(settled, 120)
        devices_active = time.monotonic() - started

        def finished() -> bool:
            with Session(hub.engine) as s:
                from cloud_hub.db.registry_tables import Rollout

                r = s.get(Rollout, rollout_id)
                return r is not None and r.status in ("succeeded", "rolled_back")

        fleet.wait_until(finished, 60, 0.1)
        with Session(hub.engine) as session:
            from cloud_hub.db.registry_tables import Rollout

            r = session.get(Rollout, rollout_id)
            assert r is not None
            view = rollout_view(session, r, with_devices=False)
        errors = [d.core.updater.last_error for d in devices if d.core.updater.last_error]
        shadowed = sum(1 for d in devices if d.core.store.current() is not None)
        result = {
            "devices": len(devices),
            "transport": broker.transport,
            "auth": broker.auth,
            "model_bytes": model_bytes,
            "seconds_to_full": view["seconds_to_full"],
            "devices_updated": view["devices_updated"],
            "rollout_status": view["status"],
            "devices_active_seconds": round(devices_active, 3),
            "devices_active": active(),
            "devices_with_model_on_disk": shadowed,
            "update_path": "desired -> retained manifest -> retained chunks -> signature, size, "
                           "sha256 -> interpreter -> shadow -> swap -> reported",
            "shadow_windows": args.shadow_windows,
            "rate_hz": args.rate,
            "device_errors": len(errors),
            "first_error": errors[0] if errors else None,
            "connect_seconds": round(connect_seconds, 1),
            "max_tick_lag_s": round(fleet.max_tick_lag_s(), 3),
            "load_average": list(os.getloadavg()),
            "train_convert_seconds": train_seconds,
            "train_windows": args.windows,
            "model_quantization": model_info["quantization"],
            "model_parity": model_info["parity"],
        }
    finally:
        if fleet is not None:
            fleet.stop(flush_timeout=10.0)
        hub.stop()
        broker.close()
        shutil.rmtree(state_root, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    print()
    for key, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"\nwrote {args.output}")
    return 0 if result["rollout_status"] == "succeeded" and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
