"""Rollout benchmark: seconds_to_full for a ~30 KB int8 model to 1,000 devices on one mosquitto.

Also measures train_convert_seconds: training + conversion + parity of the default model on
10,000 windows. The devices are lightweight paho clients driven by one selector loop in this
process; each one follows its retained `desired`, fetches the retained manifest and chunks,
verifies size, hashes and signature, and publishes `reported` active. The hub runs in-process
with its real ingest, publisher and rollout controller.

    .venv/bin/python bench/rollout.py [--devices 1000] [--skip-training]

Prints a table and writes reports/bench/rollout.json.
"""

from __future__ import annotations

import argparse
import json
import selectors
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud_hub.core.config import Settings  # noqa: E402
from cloud_hub.rollouts.actions import create_rollout, rollout_view  # noqa: E402
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget  # noqa: E402
from cloud_hub.service import Hub  # noqa: E402
from shared.codec import reassemble  # noqa: E402
from shared.manifest import Manifest, parse_manifest  # noqa: E402
from shared.messages import (  # noqa: E402
    Desired,
    DeviceStatus,
    ModelState,
    Reported,
    ReportedModel,
    Status,
    decode,
    encode,
)
from shared.signing import load_public_key, verify_manifest  # noqa: E402
from shared.topics import Topics  # noqa: E402
from simulator.broker import Broker, Credential  # noqa: E402


class LightDevice:
    """One MQTT connection per device; its callbacks run in the fleet's selector loop."""

    def __init__(self, device_id: str, topics: Topics, pinned: dict[str, Any], broker: Broker,
                 credential: Credential) -> None:
        self.device_id, self.topics, self.pinned = device_id, topics, pinned
        # The secure configuration, as every run: TLS and this device's own credential.
        self.client = broker.client(credential, protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.manifest: Manifest | None = None
        self.chunks: dict[int, bytes] = {}
        self.active_at: float | None = None
        self.connected = False
        self.error: str | None = None

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        self.connected = True
        client.subscribe(self.topics.desired(self.device_id), qos=1)
        status = Status(device_id=self.device_id, state=DeviceStatus.ONLINE, at=time.time())
        client.publish(self.topics.status(self.device_id), encode(status), qos=1, retain=True)

    def _on_message(self, client: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            self._handle(client, m)
        except Exception as exc:  # a bench device records its failure and stays quiet
            self.error = f"{type(exc).__name__}: {exc}"

    def _handle(self, client: mqtt.Client, m: mqtt.MQTTMessage) -> None:
        if m.topic.endswith("/desired"):
            desired = decode(Desired, bytes(m.payload))
            if desired.model is not None:
                client.subscribe(self.topics.manifest(desired.model.name, desired.model.version),
                                 qos=1)
            return
        parsed = self.topics.parse(m.topic)
        assert parsed.model_name is not None and parsed.model_version is not None
        if parsed.kind == "manifest":
            self.manifest = parse_manifest(bytes(m.payload))
            verify_manifest(self.manifest, self.pinned)
            client.subscribe(self.topics.chunks_filter(parsed.model_name, parsed.model_version),
                             qos=1)
            return
        assert parsed.chunk_index is not None
        self.chunks[parsed.chunk_index] = bytes(m.payload)
        manifest = self.manifest
        if manifest is None or len(self.chunks) < manifest.chunks.count:
            return
        reassemble([self.chunks[i] for i in range(manifest.chunks.count)],
                   chunk_hashes=manifest.chunks.sha256, size=manifest.size,
                   sha256=manifest.sha256)
        model = ReportedModel(name=manifest.name, version=manifest.version,
                              sha256=manifest.sha256)
        reported = Reported(device_id=self.device_id, model=model, state=ModelState.ACTIVE,
                            since=time.time(), active=model)
        client.publish(self.topics.reported(self.device_id), encode(reported), qos=1,
                       retain=True)
        self.active_at = time.time()
        self.chunks = {}


class Fleet:
    """Many paho clients on one selector: no thread per device."""

    def __init__(self, devices: list[LightDevice], port: int) -> None:
        self.devices = devices
        self.selector = selectors.DefaultSelector()
        for d in devices:
            d.client.connect("127.0.0.1", port, keepalive=120)
            sock = d.client.socket()
            assert sock is not None
            self.selector.register(sock, selectors.EVENT_READ, d.client)
        self._last_misc = 0.0

    def step(self, timeout: float = 0.01) -> None:
        for d in self.devices:
            if d.client.want_write():
                d.client.loop_write()
        for key, _ in self.selector.select(timeout):
            key.data.loop_read(10)
            sock: Any = key.fileobj  # TLS: decrypted bytes can wait where select cannot see them
            while getattr(sock, "pending", None) is not None and sock.pending() > 0:
                key.data.loop_read(10)
        now = time.monotonic()
        if now - self._last_misc > 1.0:
            self._last_misc = now
            for d in self.devices:
                d.client.loop_misc()

    def run_until(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached within {timeout}s")
            self.step()

    def close(self) -> None:
        for d in self.devices:
            d.client.disconnect()
            d.client.loop_write()
        self.selector.close()


def synthetic_readings(rows: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)[:, None]
    phases = rng.uniform(0, 2 * np.pi, channels)[None, :]
    base = np.sin(2 * np.pi * t / 50 + phases) + 0.3 * np.sin(2 * np.pi * t / 7 + phases)
    return (base + 0.05 * rng.standard_normal((rows, channels))).astype(np.float32)


def train_model(hub: Hub, windows: int) -> tuple[tuple[str, int], float, dict[str, Any]]:
    from cloud_hub.training.artifact import TrainingSpec
    from cloud_hub.training.pipeline import run_training

    spec = TrainingSpec()
    channels = [f"ch{i}" for i in range(8)]
    readings = synthetic_readings(windows + spec.window - 1, len(channels))
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
    parser.add_argument("--output", type=Path, default=REPO / "reports/bench/rollout.json")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-rollout-"))
    broker = Broker()
    # Every device's identity goes into the broker's file before it starts (one role each,
    # client id bound): adding 1,000 through $CONTROL would take minutes.
    device_ids = [f"bench-{i:04d}" for i in range(args.devices)]
    credentials = broker.add_devices(device_ids)
    mqtt_settings = broker.hub_settings("bench-hub")
    broker.start()
    # The devices' broker credentials were made above; the hub keeps only its registry.
    hub = Hub(Settings(data_dir=workdir / "hub", admin_api_key="bench-admin-key-0123456789",
                       rollout_tick_s=0.05, mqtt_dynsec=False, **mqtt_settings))
    hub.enrollment.enroll(device_ids)
    hub.start()
    fleet: Fleet | None = None
    try:
        print(f"training the default model on {args.windows:,} windows …", flush=True)
        (name, version), train_seconds, model_info = train_model(hub, args.windows)
        from sqlmodel import Session

        from cloud_hub.registry.lifecycle import publish_model

        with Session(hub.engine) as session:
            record = publish_model(session, name=name, version=version,
                                   releases=hub.releases)
            model_bytes = record.size_bytes
        pinned = {hub.signing_key.key_id: load_public_key(hub.signing_key.public_b64())}
        devices = [LightDevice(d, hub.topics, pinned, broker, credentials[d])
                   for d in device_ids]
        fleet = Fleet(devices, broker.port)
        fleet.run_until(lambda: all(d.connected for d in devices), 60, "all devices connected")
        print(f"{len(devices)} devices connected; rolling out {name} v{version} "
              f"({model_bytes:,} bytes)", flush=True)
        with Session(hub.engine) as session:
            rollout = create_rollout(
                session, name=name, version=version,
                target=RolloutTarget(devices=[d.device_id for d in devices]),
                policy=RolloutPolicy(canary_size=len(devices), wave_size=len(devices),
                                     min_observation_s=0.0, max_failure_ratio=0.0,
                                     max_anomaly_rate_increase=1.0, stage_timeout_s=120.0),
            )
            rollout_id = rollout.id
        hub.rollouts.wake()
        started = time.time()
        fleet.run_until(lambda: all(d.active_at or d.error for d in devices), 120,
                        "every device active")
        devices_active = time.time()

        def finished() -> bool:
            with Session(hub.engine) as s:
                from cloud_hub.db.registry_tables import Rollout

                r = s.get(Rollout, rollout_id)
                return r is not None and r.status in ("succeeded", "rolled_back")

        fleet.run_until(finished, 60, "rollout confirmed by the hub")
        with Session(hub.engine) as session:
            from cloud_hub.db.registry_tables import Rollout

            r = session.get(Rollout, rollout_id)
            assert r is not None
            view = rollout_view(session, r, with_devices=False)
        errors = [d.error for d in devices if d.error]
        result = {
            "devices": len(devices),
            "model_bytes": model_bytes,
            "seconds_to_full": view["seconds_to_full"],
            "devices_updated": view["devices_updated"],
            "rollout_status": view["status"],
            "devices_active_seconds": devices_active - started,
            "device_errors": len(errors),
            "train_convert_seconds": train_seconds,
            "train_windows": args.windows,
            "model_quantization": model_info["quantization"],
            "model_parity": model_info["parity"],
        }
    finally:
        if fleet is not None:
            fleet.close()
        hub.stop()
        broker.close()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    print()
    for key, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"\nwrote {args.output.relative_to(REPO)}")
    return 0 if result["rollout_status"] == "succeeded" and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
