"""The hub's memory around a training job: RSS of ``cloud-hub serve`` idle, during and after one
default training job (which runs in a child process), and the child's own peak.

Issue 11 measured 720 MB of hub RSS after one training, when TensorFlow loaded into the hub. A
private broker and a real ``cloud-hub serve`` are started; the job trains on simulated pump
readings uploaded as CSV (the default spec, ``--windows`` training windows). Prints a table and
writes ``reports/bench/hub_memory.json``. The machine is shared: expect noise in the seconds.

    .venv/bin/python bench/hub_memory.py [--windows 4000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud_hub.cli.client import HubClient  # noqa: E402
from simulator.broker import Broker  # noqa: E402
from simulator.hub_process import HubProcess  # noqa: E402
from simulator.signals import SignalGenerator  # noqa: E402


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children_rss_mb(pid: int) -> float:
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    total += _rss_mb(int(child))
            except OSError:
                continue
    return total


def _csv(windows: int) -> bytes:
    rows = int(windows / 0.8) + 64
    block = SignalGenerator("pump", seed=1, rate_hz=1.0).generate(rows)
    names = SignalGenerator("pump").channels
    lines = ["ts," + ",".join(names)]
    lines += [f"{i}," + ",".join(f"{v:.5f}" for v in row)
              for i, row in enumerate(np.asarray(block.values))]
    return ("\n".join(lines) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4000, help="training windows")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "hub_memory.json")
    args = parser.parse_args(argv)
    with Broker() as broker, tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        hub = HubProcess(Path(tmp) / "hub", mqtt_port=broker.port,
                         extra_env=broker.hub_env("edgeloop-hub")).start()
        try:
            assert hub.pid is not None
            client = HubClient(hub.url, hub.admin_api_key)
            idle = _rss_mb(hub.pid)
            job = client.request("POST", "/training-jobs/csv", params={"name": "bench-ae"},
                                 content=_csv(args.windows),
                                 headers={"Content-Type": "text/csv"})
            hub_peak, child_peak, started = idle, 0.0, time.monotonic()
            while job["status"] in ("queued", "running"):
                hub_peak = max(hub_peak, _rss_mb(hub.pid))
                child_peak = max(child_peak, _children_rss_mb(hub.pid))
                time.sleep(0.5)  # sampling /proc while the job runs
                job = client.get(f"/training-jobs/{job['id']}")
            seconds = time.monotonic() - started
            time.sleep(2.0)  # let the child's exit settle before the last sample
            after = _rss_mb(hub.pid)
            tf_in_hub = "tensorflow" in Path(f"/proc/{hub.pid}/maps").read_text()
            client.close()
        finally:
            hub.stop()
    result = {
        "job_status": job["status"],
        "job_seconds": round(seconds, 1),
        "training_windows": args.windows,
        "hub_rss_idle_mb": round(idle, 1),
        "hub_rss_peak_during_job_mb": round(hub_peak, 1),
        "hub_rss_after_job_mb": round(after, 1),
        "training_child_rss_peak_mb": round(child_peak, 1),
        "tensorflow_loaded_in_hub": tf_in_hub,
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if job["status"] == "succeeded" and not tf_in_hub else 1


if __name__ == "__main__":
    raise SystemExit(main())
