"""``bench/edge.py``'s TFLite timing: the agent's runtime per window, per reading, paced and in
batches, in a child interpreter that never imports TensorFlow (the legacy venv's too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ROUND_WINDOWS = 250  # windows per timing round (about 1 ms: shorter than a time slice)

# The child's code: edge runtime + numpy only; proves TensorFlow stays out of it. Rounds
# alternate between the models, so a busy spell of the machine slows both alike.
_TFLITE_TIMER = r"""
import json, sys, time
import numpy as np
from edge_agent.inference.runtime import TfliteModel
windows = np.load(sys.argv[1])
windows = windows.reshape(len(windows), -1)  # flat, as window_input takes them
rounds, size = int(sys.argv[2]), int(sys.argv[3])
models = {path: TfliteModel(open(path, "rb").read()) for path in sys.argv[5:]}
manifest = None
if sys.argv[4] != "-":  # the agent's whole per-reading path too: Detector.push
    import msgspec
    from edge_agent.detect.detector import Detector
    from edge_agent.detect.records import LoadedModel
    from edge_agent.sources.base import Reading
    from shared.manifest import Manifest
    manifest = msgspec.json.decode(open(sys.argv[4], "rb").read(), type=Manifest)
out = {path: [] for path in models}
for model in models.values():
    for w in windows[:50]:
        model.reconstruct(w)
invoke = {path: [] for path in models}
copies = {path: [] for path in models}
copyto = np.copyto
for r in range(rounds):  # short rounds: some fall between other processes' time slices
    part = windows[(r * size) % len(windows):][:size]
    for path, model in models.items():
        # the agent's per-window call (Detector): the window goes into window_input (the
        # detector's normalization writes it there; here a copy stands for that write) and
        # reconstruct_input() gives the reconstruction, read in place
        buffer, run = model.window_input, model.reconstruct_input
        started = time.perf_counter()
        for w in part:
            copyto(buffer, w)
            run()
        out[path].append((time.perf_counter() - started) * 1e6 / len(part))
        started = time.perf_counter()  # reconstruct(): a fresh array (the hub's parity path)
        for w in part:
            model.reconstruct(w)
        copies[path].append((time.perf_counter() - started) * 1e6 / len(part))
        run = model.invoke  # the interpreter alone: what the model costs without Python
        started = time.perf_counter()
        for _ in range(len(part)):
            run()
        invoke[path].append((time.perf_counter() - started) * 1e6 / len(part))
        del run
for path, model in models.items():
    out[path + ":invoke"] = invoke[path]
    out[path + ":reconstruct"] = copies[path]
    out[path + ":options"] = {"io": model.io, "delegate": model.delegate,
                              "resolver": model.resolver}
if manifest is not None:
    n = len(manifest.input.channels)
    readings = [Reading(float(i), tuple(float(v) for v in w.reshape(-1, n)[-1]))
                for i, w in enumerate(windows)]
    detectors = {}
    for path, model in models.items():
        detector = Detector(list(manifest.input.channels))
        detector.activate(LoadedModel(manifest=manifest, runtime=model,
                                      threshold=manifest.threshold, channel_index=list(range(n))))
        for reading in readings[:100]:
            detector.push(reading)
        detectors[path] = detector
    push = {path: [] for path in models}
    for r in range(rounds):
        part = readings[(r * size) % len(readings):][:size]
        for path, detector in detectors.items():
            started = time.perf_counter()
            for reading in part:
                detector.push(reading)
            push[path].append((time.perf_counter() - started) * 1e6 / len(part))
    for path in models:
        out[path + ":push"] = push[path]
batch = {path: [] for path in models}
for model in models.values():
    model.reconstruct_batch(windows[:128], batch_size=64)
for r in range(max(5, rounds // 4)):  # the batches take turns too
    for path, model in models.items():
        started = time.perf_counter()
        model.reconstruct_batch(windows, batch_size=64)
        batch[path].append((time.perf_counter() - started) * 1e6 / len(windows))
# Paced: one call per PACE_S, as the daemon makes them (a reading every 0.1-1 s), against a
# 64-value numpy dot at the same pace: after a sleep the first call runs with cold caches on a
# woken CPU, whatever it does, so the daemon's inference_us measures mostly that.
def paced(fn):
    times = []
    for _ in range(PACED_CALLS):
        time.sleep(PACE_S)
        started = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - started) / 1000)
    return sorted(times)[len(times) // 2]
PACE_S, PACED_CALLS = 0.02, 100
a = np.ones(64, dtype=np.float32)
out["numpy_dot_paced_us"] = paced(lambda: float(np.dot(a, a)))
for path, model in models.items():
    out[path + ":paced"] = paced(model.reconstruct_input)
for path, model in models.items():
    out[path + ":batch64"] = sorted(batch[path])[len(batch[path]) // 2]
    out["runtime"] = model.runtime
out["tensorflow_loaded"] = "tensorflow" in sys.modules
status = open("/proc/self/status").read().split("VmRSS:")[1].split()[0]
out["rss_bytes"] = int(status) * 1024
print(json.dumps(out))
"""


def time_tflite_in_subprocess(
    workdir: Path, windows: np.ndarray, models: dict[str, bytes], *, rounds: int = 40,
    python: str = sys.executable, manifest: Any = None,
) -> dict[str, Any]:
    """µs per window of each model: every round's figure, then ``name:batch64``, ``name:invoke``
    and, given a ``manifest``, ``name:push`` (a reading through ``Detector.push``)."""
    import msgspec

    np.save(workdir / "windows.npy", windows)
    manifest_path = "-"
    if manifest is not None:
        manifest_path = str(workdir / "manifest.json")
        Path(manifest_path).write_bytes(msgspec.json.encode(manifest))
    paths = []
    for name, data in models.items():
        path = workdir / f"{name}.tflite"
        path.write_bytes(data)
        paths.append(str(path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [python, "-c", _TFLITE_TIMER, str(workdir / "windows.npy"), str(rounds),
         str(min(ROUND_WINDOWS, len(windows))), manifest_path, *paths],
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
        key = str(workdir / f"{name}.tflite")
        for suffix in ("", ":batch64", ":invoke", ":reconstruct", ":push", ":options", ":paced"):
            if key + suffix in result:
                result[name + suffix] = result.pop(key + suffix)
    return result


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(ordered[len(ordered) // 2], 2), "min": round(ordered[0], 2),
            "max": round(ordered[-1], 2)}
