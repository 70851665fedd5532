"""Edge inference benchmark (issue 3): TFLite through the agent's runtime vs Keras, sizes, RSS.

1. Trains the default model (dense AE, 32 readings × 8 pump channels) on simulated readings and
   converts it to int8 and float32 TFLite.
2. Times one window at a time: Keras eager ``model(x)`` and ``model.predict(x)`` here; the two
   TFLite models in a *subprocess that never imports TensorFlow*, through
   ``edge_agent.inference.runtime.TfliteModel`` (quantizing the input in Python, as the device).
3. Starts a private mosquitto, publishes the signed int8 model with the hub's publisher, runs a
   real ``edge-agent run --config …`` process with a CSV source, waits until it reports the
   model ``active`` and samples its resident memory while it scores.

Prints a table and writes ``reports/bench/edge.json``.

    .venv/bin/python bench/edge.py [--windows 2000] [--agent-seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The child's code: edge runtime + numpy only; proves TensorFlow stays out of it.
_TFLITE_TIMER = r"""
import json, sys, time
import numpy as np
from edge_agent.inference.runtime import TfliteModel
windows = np.load(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    model = TfliteModel(open(path, "rb").read())
    for w in windows[:50]:
        model.reconstruct(w)
    started = time.perf_counter()
    for w in windows:
        model.reconstruct(w)
    out[path] = (time.perf_counter() - started) * 1e6 / len(windows)
    out["runtime"] = model.runtime
out["tensorflow_loaded"] = "tensorflow" in sys.modules
status = open("/proc/self/status").read().split("VmRSS:")[1].split()[0]
out["rss_bytes"] = int(status) * 1024
print(json.dumps(out))
"""


def train_default_model() -> tuple[Any, Any]:
    """Fit the default spec on a simulated fleet; convert int8 and float32 with parity."""
    from cloud_hub.quantize.compare import compare_modes
    from cloud_hub.training.artifact import TrainingSpec
    from cloud_hub.training.pipeline import fit_model
    from shared.manifest import Quantization
    from simulator.signals import SignalGenerator

    devices, rows = 6, 2000
    blocks = [SignalGenerator("pump", seed=i, rate_hz=1.0).generate(rows) for i in range(devices)]
    channels = SignalGenerator("pump").channels
    readings = np.concatenate([b.values for b in blocks])
    spec = TrainingSpec()
    fitted = fit_model(readings, channels, spec, segments=[rows] * devices)
    results = compare_modes(
        fitted.model,
        representative=fitted.train_x,
        windows=fitted.validation_x,
        float_reconstructions=fitted.float_reconstructions,
        score=fitted.score,
        threshold=fitted.threshold.threshold,
        lengths=fitted.data.validation_lengths,
        modes=[Quantization.INT8, Quantization.FLOAT32],
    )
    return fitted, results


def time_keras(model: Any, windows: np.ndarray) -> tuple[float, float]:
    """µs per single window: eager ``model(x)`` and ``model.predict(x)``."""
    for w in windows[:20]:
        model(w[None], training=False)
    started = time.perf_counter()
    for w in windows:
        np.asarray(model(w[None], training=False))
    eager = (time.perf_counter() - started) * 1e6 / len(windows)
    few = windows[: max(10, len(windows) // 10)]
    model.predict(few[:2], verbose=0)
    started = time.perf_counter()
    for w in few:
        model.predict(w[None], verbose=0)
    predict = (time.perf_counter() - started) * 1e6 / len(few)
    return eager, predict


def time_tflite_in_subprocess(
    workdir: Path, windows: np.ndarray, models: dict[str, bytes]
) -> dict[str, Any]:
    np.save(workdir / "windows.npy", windows)
    paths = []
    for name, data in models.items():
        path = workdir / f"{name}.tflite"
        path.write_bytes(data)
        paths.append(str(path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _TFLITE_TIMER, str(workdir / "windows.npy"), *paths],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"TFLite timing subprocess failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for name in models:
        result[name] = result.pop(str(workdir / f"{name}.tflite"))
    return result


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tensorflow_mapped(pid: int) -> bool:
    """Whether any TensorFlow shared library is mapped into the process."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "/tensorflow/" in maps or "libtensorflow" in maps


def measure_agent(workdir: Path, fitted: Any, int8: Any, seconds: float) -> dict[str, Any]:
    """Run a real ``edge-agent`` process with the int8 model active and sample its RSS."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from cloud_hub.mqtt.connection import HubConnection
    from cloud_hub.mqtt.publisher import Publisher
    from shared.codec import sha256_hex, split
    from shared.manifest import ChunkTable, InputSpec, Manifest
    from shared.messages import Desired, ModelRef, ModelState, Reported, decode
    from shared.signing import generate_signing_key
    from shared.topics import Topics
    from simulator.broker import Broker
    from simulator.signals import SignalGenerator

    key = generate_signing_key()
    topics = Topics()
    tflite = int8.tflite
    chunk_size = 16 * 1024
    chunks = split(tflite, chunk_size)
    channels = SignalGenerator("pump").channels
    manifest = key.sign(
        Manifest(
            name="bench-edge",
            version=1,
            release=1,
            created_at=time.time(),
            quantization=int8.report.quantization,
            size=len(tflite),
            sha256=sha256_hex(tflite),
            chunk_size=chunk_size,
            chunks=ChunkTable(count=len(chunks), sha256=[sha256_hex(c) for c in chunks]),
            input=InputSpec(
                window=fitted.data.train.shape[1],
                channels=channels,
                dtype="int8",
                layout=fitted.family.layout,
            ),
            normalization=fitted.data.normalization,
            score=fitted.score,
            threshold=fitted.threshold.threshold,
            parity=int8.report.summary(),
            float_size=int8.report.float_size_bytes,
            key_id=key.key_id,
        )
    )
    block = SignalGenerator("pump", seed=99, rate_hz=1.0).generate(3000)
    csv_path = workdir / "pump.csv"
    with csv_path.open("w") as fh:
        fh.write("timestamp," + ",".join(channels) + "\n")
        for ts, row in zip(block.ts, block.values, strict=True):
            fh.write(f"{ts:.3f}," + ",".join(f"{v:.6g}" for v in row) + "\n")

    broker = Broker()
    broker.start()
    proc: subprocess.Popen[bytes] | None = None
    reports: queue.Queue[Reported] = queue.Queue()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-edge-watch")
    try:
        connection = HubConnection(host=broker.host, port=broker.port, topics=topics,
                                   client_id="bench-edge-pub", subscriptions=[])
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

        config = workdir / "agent.toml"
        config.write_text(
            f'device_id = "bench-edge-1"\nstate_dir = "{workdir / "agent-state"}"\n'
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'[trust]\nkeys = {{ "{key.key_id}" = "{key.public_b64()}" }}\n'
            f'[source]\ntype = "csv"\noptions = {{ path = "{csv_path}", replay_speed = 20.0, '
            f"loop = true }}\n"
            "[model]\nshadow_windows = 0\n[heartbeat]\ninterval_s = 2.0\n"
            '[log]\nlevel = "WARNING"\n'
        )
        agent_bin = Path(sys.executable).parent / "edge-agent"
        command = [str(agent_bin), "run", "--config", str(config)]
        log_file = (workdir / "agent.log").open("wb")
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
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
            tail = (workdir / "agent.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"agent did not activate the model (last state {state}):\n{tail}")
        samples = []
        end = time.monotonic() + seconds
        while time.monotonic() < end and proc.poll() is None:
            samples.append(rss_of(proc.pid))
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"edge-agent exited with {proc.returncode} while measured")
        return {
            "agent_rss_bytes": max(samples),
            "agent_rss_samples": len(samples),
            "agent_tensorflow_loaded": tensorflow_mapped(proc.pid),
            "agent_command": "edge-agent run --config <tmp>/agent.toml",
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        watcher.loop_stop()
        watcher.disconnect()
        broker.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000, help="windows timed per TFLite model")
    parser.add_argument("--keras-windows", type=int, default=300)
    parser.add_argument("--agent-seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "edge.json")
    args = parser.parse_args(argv)

    print("training the default model (dense AE, 32 × 8, int8) ...")
    fitted, results = train_default_model()
    from shared.manifest import Quantization

    int8, float32 = results[Quantization.INT8], results[Quantization.FLOAT32]
    windows = fitted.validation_x[: args.windows]
    print("timing Keras (eager call and predict) ...")
    keras_us, predict_us = time_keras(fitted.model, fitted.validation_x[: args.keras_windows])
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        workdir = Path(tmp)
        print("timing TFLite in a subprocess without TensorFlow ...")
        tfl = time_tflite_in_subprocess(
            workdir, windows, {"int8": int8.tflite, "float32": float32.tflite}
        )
        print("running edge-agent against a private mosquitto ...")
        agent = measure_agent(workdir, fitted, int8, args.agent_seconds)

    result = {
        "int8_us_per_window": round(tfl["int8"], 2),
        "float32_us_per_window": round(tfl["float32"], 2),
        "keras_us_per_window": round(keras_us, 1),
        "keras_predict_us_per_window": round(predict_us, 1),
        "int8_speedup_vs_keras": round(keras_us / tfl["int8"], 1),
        "int8_size_bytes": len(int8.tflite),
        "float32_size_bytes": len(float32.tflite),
        "int8_size_ratio": round(len(int8.tflite) / len(float32.tflite), 3),
        "int8_parity": int8.report.decision_agreement,
        "agent_rss_bytes": agent["agent_rss_bytes"],
        "agent_rss_mb": round(agent["agent_rss_bytes"] / 2**20, 1),
        "agent_tensorflow_loaded": agent["agent_tensorflow_loaded"],
        "timer_process_rss_bytes": tfl["rss_bytes"],
        "timer_process_tensorflow_loaded": tfl["tensorflow_loaded"],
        "runtime": tfl["runtime"],
        "windows_timed": len(windows),
        "window": fitted.data.train.shape[1],
        "channels": fitted.data.train.shape[2],
    }
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
