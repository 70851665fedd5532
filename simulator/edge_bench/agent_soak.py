"""A real ``edge-agent`` process with ``bench/edge.py``'s int8 model active, against a private
mosquitto: its RSS sampled while it scores, its memory by kind now and then, its RSS slope."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from simulator.edge_bench.agent_memory import (
    agent_env,
    compile_agent_bytecode,
    process_memory,
    wait_for_release,
)
from simulator.edge_bench.default_model import signed_manifest
from simulator.process import start_child

SNAPSHOT_EVERY_S = 30.0  # memory snapshots of the agent while it is sampled (--soak)
SLOPE_AFTER_S = 60.0  # the RSS slope leaves out the warm-up (see rss_slope_mb_per_h)


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tensorflow_mapped(pid: int) -> bool:
    """Whether any TensorFlow shared library is mapped into the process."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "/tensorflow/" in maps or "libtensorflow" in maps


def measure_agent(
    workdir: Path, fitted: Any, int8: Any, seconds: float, runs: int
) -> list[dict[str, Any]]:
    """Run a real ``edge-agent`` process ``runs`` times with the int8 model active; each run's
    RSS samples over ``seconds`` (after the start-up pages were released), its memory every
    :data:`SNAPSHOT_EVERY_S` and at the end."""
    import paho.mqtt.client as mqtt

    from cloud_hub.mqtt.client import MqttAuth
    from cloud_hub.mqtt.connection import HubConnection
    from cloud_hub.mqtt.publisher import Publisher
    from shared.messages import Desired, ModelRef, Reported, decode
    from shared.signing import generate_signing_key
    from shared.topics import TopicAccess, Topics
    from simulator.broker import Broker
    from simulator.signals import SignalGenerator

    compile_agent_bytecode()
    key = generate_signing_key()
    topics = Topics()
    tflite = int8.tflite
    channels = SignalGenerator("pump").channels
    manifest = signed_manifest(fitted, int8, key)
    block = SignalGenerator("pump", seed=99, rate_hz=1.0).generate(3000)
    csv_path = workdir / "pump.csv"
    with csv_path.open("w") as fh:
        fh.write("timestamp," + ",".join(channels) + "\n")
        for ts, row in zip(block.ts, block.values, strict=True):
            fh.write(f"{ts:.3f}," + ",".join(f"{v:.6g}" for v in row) + "\n")

    broker = Broker()
    broker.start()
    reports: queue.Queue[Reported] = queue.Queue()
    hub = broker.add_hub("edgeloop-hub")  # the stand-in hub publishes as edgeloop-hub
    watcher = broker.client(broker.add_client("bench-edge-watch", TopicAccess(
        publish=(), subscribe=(topics.reported("bench-edge-1"),))), protocol=mqtt.MQTTv311)
    try:
        connection = HubConnection(
            host=broker.host, port=broker.port, topics=topics, client_id="edgeloop-hub",
            subscriptions=[], auth=MqttAuth(password=hub.password, tls=broker.secure,
                                            ca_file=str(broker.ca_file)))
        connection.start()
        connection.wait_ready(10)
        publisher = Publisher(connection)
        publisher.publish_model(manifest, tflite)
        publisher.publish_desired(
            Desired(
                device_id="bench-edge-1",
                model=ModelRef(name="bench-edge", version=1),
                issued_at=time.time(),
            )
        )
        connection.stop()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            try:
                reports.put(decode(Reported, msg.payload))
            except Exception as exc:  # a bench: say it and go on
                print(f"  (unreadable reported message: {exc})")

        watcher.on_message = on_message
        watcher.connect(broker.host, broker.port)
        watcher.subscribe(topics.reported("bench-edge-1"), qos=1)
        watcher.loop_start()
        results = []
        for run in range(runs):
            results.append(
                run_agent_once(workdir / f"run-{run}", broker, key, csv_path, reports, seconds)
            )
        return results
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        broker.close()


def _snapshot(pid: int, workdir: Path, start: float) -> dict[str, Any]:
    """The agent's memory now, with its outbox depth and the machine's load."""
    memory = process_memory(pid)
    try:
        depth = json.loads((workdir / "agent-state" / "status.json").read_text())["outbox_depth"]
    except (OSError, ValueError, KeyError):
        depth = None
    return {"s": round(time.monotonic() - start), "rss_mb": memory["rss_mb"],
            "pss_mb": memory["pss_mb"], "anonymous_mb": memory["anonymous_mb"],
            "by_kind_mb": memory["by_kind_mb"], "outbox_depth": depth,
            "load1": round(os.getloadavg()[0], 2)}


def rss_slope_mb_per_h(times: list[float], samples: list[int]) -> float | None:
    """Least-squares slope of the RSS in MiB per hour (the unit of the other ``_mb`` figures),
    over the second half of the run and never its first :data:`SLOPE_AFTER_S` (the released
    library pages come back then). None when that leaves less than a minute: a 30 s run's slope
    is its warm-up, 37-41 MiB/h, and says nothing of a creep."""
    if not times:
        return None
    since = max(SLOPE_AFTER_S, times[-1] / 2)
    kept = [(t, y) for t, y in zip(times, samples, strict=True) if t >= since]
    if len(kept) < 10 or kept[-1][0] - kept[0][0] < 60.0:
        return None
    t = np.asarray([k[0] for k in kept], dtype=np.float64)
    y = np.asarray([k[1] for k in kept], dtype=np.float64) / 2**20
    slope = float(np.polyfit(t - t[0], y, 1)[0])
    return round(slope * 3600.0, 2)


def run_agent_once(
    workdir: Path, broker: Any, key: Any, csv_path: Path, reports: queue.Queue[Any],
    seconds: float,
) -> dict[str, Any]:
    from shared.messages import ModelState

    workdir.mkdir(parents=True)
    config = workdir / "agent.toml"
    config.write_text(
        f'device_id = "bench-edge-1"\nstate_dir = "{workdir / "agent-state"}"\n'
        f'[mqtt]\n{broker.agent_mqtt_toml(broker.add_device("bench-edge-1"))}'
        f'[trust]\nkeys = {{ "{key.key_id}" = "{key.public_b64()}" }}\n'
        f'[source]\ntype = "csv"\noptions = {{ path = "{csv_path}", replay_speed = 20.0, '
        f"loop = true }}\n"
        "[model]\nshadow_windows = 0\n[heartbeat]\ninterval_s = 2.0\n"
        '[log]\nlevel = "INFO"\n'  # the bench waits for the line on released start-up pages
    )
    agent_bin = Path(sys.executable).parent / "edge-agent"
    command = [str(agent_bin), "run", "--config", str(config)]
    log_path = workdir / "agent.log"
    proc = start_child(command, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                       env=agent_env())
    try:
        while not reports.empty():  # the previous run's
            reports.get_nowait()
        deadline = time.monotonic() + 60.0
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                reported = reports.get(timeout=1.0)
            except queue.Empty:
                continue
            state = reported.state
            if state == ModelState.ACTIVE and reported.active is not None:
                break
            if state == ModelState.FAILED:
                raise RuntimeError(f"the agent refused the model: {reported.error}")
        if state != ModelState.ACTIVE:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"agent did not activate the model (last state {state}):\n{tail}")
        wait_for_release(log_path, proc, timeout=60.0, model="bench-edge v1")
        samples = []
        times = []  # seconds since the release, of each sample
        series = []  # (seconds, RSS, PSS, anonymous MB, kinds, outbox depth, load) now and then
        start = time.monotonic()
        end = start + seconds
        next_snapshot = start
        while time.monotonic() < end and proc.poll() is None:
            samples.append(rss_of(proc.pid))
            times.append(time.monotonic() - start)
            if time.monotonic() >= next_snapshot:
                next_snapshot += SNAPSHOT_EVERY_S
                series.append(_snapshot(proc.pid, workdir, start))
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"edge-agent exited with {proc.returncode} while measured")
        memory = process_memory(proc.pid)
        series.append(_snapshot(proc.pid, workdir, start))
        status = json.loads((workdir / "agent-state" / "status.json").read_text())
        return {
            # the steady state is the maximum: the library pages released at start-up come
            # back as they are used, and the outbox grows (no hub acknowledges here)
            "rss_bytes": max(samples),
            "rss_samples": len(samples),
            # creep check: the first and last sample (after the start-up pages were released)
            "rss_first_bytes": samples[0],
            "rss_last_bytes": samples[-1],
            "rss_slope_mb_per_h": rss_slope_mb_per_h(times, samples),
            "seconds_sampled": round(time.monotonic() - start, 1),
            "series": series,
            "memory": memory,
            "tensorflow_loaded": tensorflow_mapped(proc.pid),
            "inference_us_p50": status.get("inference_us_p50"),
            "inference_us_p99": status.get("inference_us_p99"),
        }
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
