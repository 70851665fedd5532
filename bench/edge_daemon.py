"""Edge daemon benchmark (issue 4): what a running agent costs and how it recovers.

1. ``rss_bytes`` and ``cpu_percent`` of a real ``edge-agent run`` process reading SKAB's
   anomaly-free pump data at 10 Hz × 8 channels (CSV replay at 10× its 1 Hz) while an int8
   dense autoencoder (32 readings × 8 channels, converted by the hub's converter) scores every
   window. TensorFlow builds that model here, in the benchmark process; the agent process never
   imports it. The agent runs ``--agent-runs`` times; RSS is the maximum over the runs, sampled
   once the agent has released its start-up pages, with PSS, private and anonymous memory, the
   largest mappings and the threads (see ``bench/agent_memory.py``).
2. ``replay_readings_per_s``: an outbox holding a long outage's telemetry (batches of 100
   readings × 8 channels) is drained through the agent's link and sender after the reconnect,
   until the last PUBACK.
3. ``reconnect_spread_s``: 200 agent links (the agent's ``MqttLink``, in one process) on one
   broker; the broker restarts; how far apart their reconnects land, against the configured
   back-off window.

Prints a table and writes ``reports/bench/edge_daemon.json``.

    .venv/bin/python bench/edge_daemon.py [--cpu-seconds 20] [--replay-readings 200000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_memory import (  # noqa: E402
    agent_env,
    compile_agent_bytecode,
    format_import_costs,
    import_costs,
    process_memory,
    wait_for_release,
)

from edge_agent.comms.mqtt import LinkEvent, LinkSettings, MqttLink  # noqa: E402
from edge_agent.health import cpu_seconds, rss_bytes  # noqa: E402
from edge_agent.telemetry.outbox import Outbox, Stream  # noqa: E402
from edge_agent.telemetry.sender import Sender  # noqa: E402
from shared.messages import TelemetryBatch, encode  # noqa: E402
from simulator.broker import Broker  # noqa: E402
from simulator.process import start_child  # noqa: E402

SKAB_FREE = ROOT.parent / "shared" / "data" / "skab" / "anomaly-free" / "anomaly-free.csv"
WINDOW = 32


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _broker() -> Broker:
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-mosquitto-"))
    os.chmod(workdir, 0o777)  # mosquitto drops to its own user and must write persistence here
    return Broker(workdir=workdir)


def _login(broker: Broker, device_id: str) -> dict[str, Any]:
    """LinkSettings keys for ``device_id`` on ``broker`` (TLS and its own credential)."""
    section = broker.agent_mqtt(broker.add_device(device_id))
    section.pop("topic_prefix")
    return section


def build_model(channels: list[str], data: Path) -> tuple[bytes, Any, float]:
    """Int8 dense AE 256→32→8→32→256 on SKAB's anomaly-free data; (tflite, norm, threshold)."""
    import tensorflow as tf

    from edge_agent.inference.runtime import TfliteModel
    from edge_agent.sources.csv_source import CsvSource
    from shared.scoring import fit_normalization, normalize, sliding_windows

    source = CsvSource(data, replay_speed=0)
    rows: list[tuple[float, ...]] = []
    while not source.exhausted:
        rows.extend(r.values for r in source.read(0.1))
    readings = np.asarray(rows, dtype=np.float32)
    norm = fit_normalization(readings)
    windows = sliding_windows(normalize(readings, norm), WINDOW, stride=4).reshape(-1, WINDOW * 8)
    from cloud_hub.quantize.convert import convert

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(WINDOW * 8,)),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(8, activation="relu"),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(WINDOW * 8),
    ])
    model.compile(optimizer="adam", loss="mse")
    model.fit(windows, windows, epochs=3, batch_size=64, verbose=0)
    tflite = convert(model, "int8", representative=windows)  # what the hub publishes
    runtime = TfliteModel(tflite)
    scores = [float(((w - runtime.reconstruct(w)) ** 2).mean()) for w in windows[:2000]]
    return tflite, norm, float(np.quantile(scores, 0.999)) * 1.5


def invoke_latency_us(tflite: bytes, gap_s: float, n: int) -> tuple[float, float]:
    """p50 and p99 of the span the agent's detector times (``reconstruct_input()``: the native
    invoke and nothing else) for ``tflite``, in this process, one invoke every ``gap_s``
    seconds (0: back to back).

    Why the daemon's figure is far above ``bench/edge.py``'s: issue 12 measured this span at
    0.8 us back to back, 10.7 us at one invoke per ms and 53 us at one per 100 ms (the daemon's
    10 Hz) in a process with no MQTT thread, no lock and no other Python work, and 69 us when
    the 100 ms were spent busy-waiting instead of sleeping. A timer read costs 0.13 us. So the
    gap itself costs: between two windows the machine's other work evicts the model's weights
    and XNNPACK's code from the caches, and the invoke at 10 Hz runs cold. That is the
    daemon's real per-window cost at its rate, not overhead inside the timed span."""
    from edge_agent.inference.runtime import TfliteModel

    runtime = TfliteModel(tflite)
    invoke = runtime.reconstruct_input
    runtime.window_input[:] = np.random.default_rng(0).random(runtime.window_input.size)
    spans = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter_ns()
        invoke()
        spans.append((time.perf_counter_ns() - started) / 1000.0)
    p50, p99 = np.quantile(spans, (0.5, 0.99))
    return round(float(p50), 1), round(float(p99), 1)


def measure_daemon(
    seconds: float, agent_bin: Path, runs: int = 3, data: Path = SKAB_FREE
) -> dict[str, Any]:
    """Run ``agent_bin`` (an ``edge-agent`` executable) ``runs`` times against a private broker;
    RSS and memory figures are the maximum over the runs."""
    import paho.mqtt.client as paho

    from shared.codec import sha256_hex, split
    from shared.manifest import (
        ChunkTable,
        InputSpec,
        Manifest,
        ParitySummary,
        Quantization,
        ScoreSpec,
    )
    from shared.messages import Desired, ModelRef
    from shared.signing import generate_signing_key
    from shared.topics import Topics

    channels = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
                "Thermocouple", "Voltage", "Volume Flow RateRMS"]
    tflite, norm, threshold = build_model(channels, data)
    key = generate_signing_key()
    chunks = split(tflite, 16 * 1024)
    manifest = key.sign(Manifest(
        name="bench-ae", version=1, release=1, created_at=time.time(),
        quantization=Quantization.INT8,
        size=len(tflite), sha256=sha256_hex(tflite), chunk_size=16 * 1024,
        chunks=ChunkTable(count=len(chunks), sha256=[sha256_hex(c) for c in chunks]),
        input=InputSpec(window=WINDOW, channels=channels), normalization=norm,
        score=ScoreSpec(), threshold=threshold,
        parity=ParitySummary(decision_agreement=1.0, windows=0), float_size=len(tflite),
        key_id=key.key_id,
    ))
    topics = Topics()
    broker = _broker().start()
    reported: list[dict[str, Any]] = []
    hub = broker.client(broker.add_hub("bench-hub"), protocol=paho.MQTTv311)
    hub.on_message = lambda c, u, m: reported.append(json.loads(m.payload))
    try:
        hub.connect(broker.host, broker.port)
        hub.loop_start()
        hub.subscribe(topics.reported("bench-1"), qos=1)
        for i, chunk in enumerate(chunks):
            hub.publish(topics.chunk("bench-ae", 1, i), chunk, qos=1, retain=True)
        hub.publish(topics.manifest("bench-ae", 1), manifest.to_bytes(), qos=1, retain=True)
        hub.publish(topics.desired("bench-1"), encode(Desired(
            device_id="bench-1", model=ModelRef(name="bench-ae", version=1),
            issued_at=time.time())), qos=1, retain=True).wait_for_publish(10)
        compile_agent_bytecode(str(agent_bin.parent / "python"))
        results = []
        for _ in range(runs):
            reported.clear()
            results.append(_run_agent_once(agent_bin, broker, key, reported, seconds, data))
    finally:
        hub.loop_stop()
        hub.disconnect()
        broker.close()
        shutil.rmtree(broker.workdir, ignore_errors=True)
    worst = max(results, key=lambda r: r["rss_bytes"])
    tight = invoke_latency_us(tflite, 0.0, 20_000)
    paced = invoke_latency_us(tflite, 0.1, 100)  # the daemon's 10 Hz, one window per reading
    memories = [r["memory"] for r in results]
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ladder-") as tmp:
        (Path(tmp) / "model.tflite").write_bytes(tflite)
        ladder = import_costs(str(agent_bin.parent / "python"), Path(tmp) / "model.tflite")
    return {
        "rss_bytes": worst["rss_bytes"],
        "rss_mb_runs": [round(r["rss_bytes"] / 2**20, 1) for r in results],
        "pss_mb": max(m["pss_mb"] for m in memories),
        "private_mb": max(m["private_mb"] for m in memories),
        "anonymous_mb": max(m["anonymous_mb"] for m in memories),
        "file_mb": max(m["file_mb"] for m in memories),
        "cpu_percent": max(r["cpu_percent"] for r in results),
        "sample_seconds": worst["sample_seconds"],
        "readings_per_s": 10,
        "channels": 8,
        "model_size_bytes": len(tflite),
        "runtime": worst["runtime"],
        "inference_us_p50": worst["inference_us_p50"],
        "inference_us_p99": worst["inference_us_p99"],
        # The same span for the same model in this process: back to back (bench/edge.py's
        # figure) and at the daemon's 10 Hz. The daemon's p50 tracks the paced one: a cold
        # invoke per window at a low rate, see invoke_latency_us.
        "inference_us_tight_p50_p99": list(tight),
        "inference_us_10hz_p50_p99": list(paced),
        "inference_us_note": "inference_us_p50/p99: the native invoke inside the running agent"
                             " (one window per reading at 10 Hz, cold caches); _tight: the same"
                             " invoke back to back; _10hz: the same invoke paced at 10 Hz in the"
                             " bench process",
        "agent_tensorflow_loaded": any(r["agent_tensorflow_loaded"] for r in results),
        "threads": worst["memory"]["threads"],
        "thread_stacks_kb": worst["memory"]["thread_stacks_kb"],
        "rss_breakdown_mb": worst["memory"]["by_mapping_mb"],
        "import_costs": ladder,
    }


def _run_agent_once(
    agent_bin: Path, broker: Broker, key: Any, reported: list[dict[str, Any]], seconds: float,
    data: Path,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-agent-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        config = workdir / "agent.toml"
        config.write_text(
            f'device_id = "bench-1"\nstate_dir = "state"\n'
            f'[mqtt]\n{broker.agent_mqtt_toml(broker.add_device("bench-1"))}'
            f'[trust.keys]\n{key.key_id} = "{key.public_b64()}"\n'
            f'[source]\ntype = "csv"\n[source.options]\npath = "{data}"\n'
            f'replay_speed = 10.0\nloop = true\n'
            f'[telemetry]\nbatch_max_readings = 100\nbatch_max_age_s = 1.0\n'
            f'[model]\nshadow_windows = 0\n[heartbeat]\ninterval_s = 10.0\n'
            f'[log]\nlevel = "INFO"\n'  # the bench waits for the released start-up pages
        )
        log_path = workdir / "agent.log"
        proc = start_child([str(agent_bin), "run", "--config", str(config)], cwd=workdir,
                           stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                           env=agent_env())
        _wait(lambda: any(r.get("state") == "active" for r in reported), 60, "model active")
        wait_for_release(log_path, proc, timeout=60, model="bench-ae v1")
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        rss_samples = []
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            rss_samples.append(rss_bytes(proc.pid))
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        status = json.loads((workdir / "state" / "status.json").read_text())
        with open(f"/proc/{proc.pid}/maps", encoding="ascii", errors="replace") as fh:
            maps = fh.read()
        return {
            "rss_bytes": max(rss_samples),
            "memory": process_memory(proc.pid),
            "cpu_percent": round(100.0 * (cpu1 - cpu0) / (t1 - t0), 2),
            "sample_seconds": round(t1 - t0, 1),
            "runtime": status.get("runtime"),
            "inference_us_p50": status.get("inference_us_p50"),
            "inference_us_p99": status.get("inference_us_p99"),
            "agent_tensorflow_loaded": "site-packages/tensorflow/" in maps,
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


def measure_replay(total_readings: int, batch: int = 100) -> dict[str, Any]:
    broker = _broker().start()
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-outbox-"))
    channels = [f"c{i}" for i in range(8)]
    rng = np.random.default_rng(0)
    try:
        outbox = Outbox(workdir / "outbox.db", max_bytes=1 << 30)
        for start in range(0, total_readings, batch):
            ts = [1.7e9 + (start + i) / 10 for i in range(batch)]
            values = rng.normal(size=(batch, 8)).round(4).tolist()

            def build(seq: int, ts: list[float] = ts, values: list[list[float]] = values) -> bytes:
                return encode(TelemetryBatch(device_id="bench-r", epoch=outbox.epoch, seq=seq,
                                             channels=channels,
                                             ts=ts, values=values))

            outbox.add(device_id="bench-r", stream=Stream.TELEMETRY,
                       topic="edgeloop/v1/devices/bench-r/telemetry", build=build,
                       readings=batch)
        control: queue.Queue[LinkEvent] = queue.Queue()
        link = MqttLink(LinkSettings(client_id="bench-r", **_login(broker, "bench-r")),
                        control=control)
        sender = Sender.for_outbox(outbox, link, control, max_inflight=100)
        started = time.monotonic()
        link.start()
        sender.start()
        # The broker's PUBACK of every message (no hub here to acknowledge them end to end).
        messages = -(-total_readings // batch)
        _wait(lambda: outbox.delivered() == messages, 300, "every message PUBACKed")
        elapsed = time.monotonic() - started
        sender.stop()
        link.stop()
        outbox.close()
        return {
            "replay_readings_per_s": round(total_readings / elapsed),
            "replay_messages_per_s": round(total_readings / batch / elapsed),
            "replay_readings": total_readings,
            "replay_batch_readings": batch,
            "replay_seconds": round(elapsed, 2),
        }
    finally:
        broker.close()
        shutil.rmtree(broker.workdir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def measure_reconnect_spread(n: int, initial_s: float, max_s: float) -> dict[str, Any]:
    broker = _broker()
    broker.add_devices(f"bench-{i:04d}" for i in range(n))  # before start: into the file
    broker.start()
    links = [
        MqttLink(LinkSettings(client_id=f"bench-{i:04d}", **_login(broker, f"bench-{i:04d}"),
                              keepalive=30, reconnect_initial_s=initial_s,
                              reconnect_max_s=max_s))
        for i in range(n)
    ]
    try:
        for link in links:
            link.start()
        _wait(lambda: all(link.connected for link in links), 120, "all links connected")
        broker.stop()
        _wait(lambda: not any(link.connected for link in links), 60, "all links down")
        broker.start()
        back_at = time.monotonic()
        _wait(lambda: all(link.connections >= 2 for link in links), 4 * max_s + 60,
              "all links reconnected")
        times = np.array([link.last_connected_at or 0.0 for link in links]) - back_at
        per_second = np.bincount(np.floor(np.maximum(times, 0)).astype(int))
        return {
            "reconnect_spread_s": round(float(times.max() - times.min()), 2),
            "reconnect_agents": n,
            "reconnect_backoff_window_s": initial_s,
            "reconnect_backoff_max_s": max_s,
            "reconnect_first_s": round(float(times.min()), 2),
            "reconnect_last_s": round(float(times.max()), 2),
            "reconnect_max_per_second": int(per_second.max()),
        }
    finally:
        for link in links:
            link.stop(timeout=0.5)
        broker.close()
        shutil.rmtree(broker.workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-seconds", type=float, default=20.0)
    parser.add_argument("--agent-runs", type=int, default=3, help="agent processes measured")
    parser.add_argument("--skab-free", type=Path, default=SKAB_FREE,
                        help="SKAB's anomaly-free CSV (default: beside the repository)")
    parser.add_argument("--replay-readings", type=int, default=200_000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--backoff-window", type=float, default=5.0)
    parser.add_argument("--backoff-max", type=float, default=30.0)
    parser.add_argument("--legacy-agent", type=Path, default=ROOT / ".venv-edge" / "bin" /
                        "edge-agent", help="also measure this edge-agent (tflite-runtime venv)")
    args = parser.parse_args()
    if not args.skab_free.exists():
        raise SystemExit(f"SKAB data not found at {args.skab_free} (use --skab-free)")
    logging.basicConfig(level=logging.ERROR)  # 200 links losing their broker on purpose
    results: dict[str, Any] = {}
    print("measuring the agent process at 10 Hz x 8 channels ...", flush=True)
    results.update(measure_daemon(args.cpu_seconds, Path(sys.executable).parent / "edge-agent",
                                  args.agent_runs, args.skab_free))
    if args.legacy_agent.exists():
        print(f"... and again with {args.legacy_agent} ...", flush=True)
        legacy = measure_daemon(args.cpu_seconds, args.legacy_agent, args.agent_runs,
                                args.skab_free)
        results["legacy_runtime_rss_bytes"] = legacy["rss_bytes"]
        results["legacy_runtime_pss_mb"] = legacy["pss_mb"]
        results["legacy_runtime_anonymous_mb"] = legacy["anonymous_mb"]
        results["legacy_runtime_cpu_percent"] = legacy["cpu_percent"]
        results["legacy_runtime"] = legacy["runtime"]
    print("measuring outbox replay after a reconnect ...", flush=True)
    results.update(measure_replay(args.replay_readings))
    print(f"measuring reconnects of {args.agents} links after a broker restart ...", flush=True)
    results.update(measure_reconnect_spread(args.agents, args.backoff_window, args.backoff_max))
    bars = {
        "rss_bytes": (results["rss_bytes"], "<= 50,000,000 (max)",
                      results["rss_bytes"] <= 50_000_000),
        "cpu_percent": (results["cpu_percent"], "<= 5 %", results["cpu_percent"] <= 5.0),
        "replay_readings_per_s": (results["replay_readings_per_s"], ">= 20,000",
                                  results["replay_readings_per_s"] >= 20_000),
        "reconnect_spread_s": (results["reconnect_spread_s"],
                               # n uniform draws span about (n-1)/(n+1) of the window
                               f">= 0.8 x {args.backoff_window} s",
                               results["reconnect_spread_s"] >= 0.8 * args.backoff_window),
    }
    print(f"\n{'figure':<28}{'measured':>16}  {'bar':<18}ok")
    for name, (value, bar, ok) in bars.items():
        print(f"{name:<28}{value:>16,}  {bar:<18}{'yes' if ok else 'NO'}")
    for name, value in results.items():
        if name not in bars and name != "import_costs":
            print(f"  {name:<26}{value}")
    print("\n" + format_import_costs(results["import_costs"]))
    print("\nTimings and RSS are noisy on a shared machine: quote them with the load average "
          f"(now {os.getloadavg()[0]:.1f}) and take the final figures on a quiet machine.")
    out = ROOT / "reports" / "bench" / "edge_daemon.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
