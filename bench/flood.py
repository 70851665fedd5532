"""What the ingest bench's load costs: CPU of a publisher process per acknowledged message.

The publishers (simulator/flood.py) stand in for devices that in real life are not on the hub's
machine, so every CPU-second they take is one the hub under test does not get. This runs one
publisher process against a private secure broker (TLS, its own identity) with a QoS 1
subscriber on every device's telemetry (so the broker forwards, as it does to a hub), for each
batch size and offered rate, and prints the publisher's CPU per message and messages per
CPU-second. The machine is shared: the load average is printed beside the figures.
Writes reports/bench/flood.json.

    .venv/bin/python bench/flood.py [--seconds 8] [--cases 10:3000,10:0,100:800]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shared.topics import DeviceTopic, TopicAccess  # noqa: E402
from simulator.broker import Broker  # noqa: E402
from simulator.flood import FloodPlan, Publishers  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run(readings: int, rate: float, seconds: float, devices: int) -> dict[str, Any]:
    with Broker() as broker:
        topic = broker.topics.all_devices(DeviceTopic.TELEMETRY)
        pub = broker.add_client("bench-flood", TopicAccess(publish=(topic,), subscribe=()))
        sub = broker.add_client("bench-flood-sub", TopicAccess(publish=(), subscribe=(topic,)))
        delivered = [0]
        subscribed = threading.Event()
        client = broker.client(sub)
        client.on_message = lambda *_a: delivered.__setitem__(0, delivered[0] + 1)
        client.on_subscribe = lambda *_a: subscribed.set()
        client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        client.connect(broker.host, broker.port)
        client.loop_start()
        subscribed.wait(10)
        plan = FloodPlan(devices=devices, readings=readings, rate=rate)
        publishers = Publishers(plan, [{
            "host": broker.host, "port": broker.port, "client_id": pub.client_id,
            "username": pub.username, "password": pub.password,
            "ca_file": str(broker.ca_file)}])
        publishers.start()
        pid = publishers.pids[0]
        t0, c0, a0, load0 = time.monotonic(), _cpu_s(pid), publishers.acknowledged(), _load()
        time.sleep(seconds)
        t1, c1, a1 = time.monotonic(), _cpu_s(pid), publishers.acknowledged()
        report = publishers.stop()
        client.disconnect()
        client.loop_stop()
    acked, cpu = a1 - a0, c1 - c0
    return {"readings_per_message": readings, "offered_rate": rate,
            "acked_per_s": round(acked / (t1 - t0), 1),
            "publisher_cpu_share": round(cpu / (t1 - t0), 3),
            "publisher_cpu_us_per_message": round(cpu / acked * 1e6, 1) if acked else None,
            "messages_per_publisher_cpu_s": round(acked / cpu) if cpu else None,
            "errors": report.errors[:3], "load_average": [load0, _load()]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--cases", default="10:3000,10:0,100:800",
                   help="readings:rate pairs (rate 0: as fast as the broker takes them)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "flood.json")
    args = p.parse_args()
    console = Console(width=150)
    rows = []
    for case in args.cases.split(","):
        readings, rate = case.split(":")
        console.print(f"batch {readings}, rate {rate}: {args.seconds:g} s")
        rows.append(run(int(readings), float(rate), args.seconds, args.devices))
    table = Table(title="one publisher process (simulator/flood.py), secure broker")
    for col in ("batch", "offered msg/s", "acked msg/s", "publisher CPU",
                "µs per message", "msg per CPU-s", "load average", "errors"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["readings_per_message"]), f"{r['offered_rate']:,.0f}",
                      f"{r['acked_per_s']:,.0f}", f"{r['publisher_cpu_share'] * 100:.0f}%",
                      str(r["publisher_cpu_us_per_message"]),
                      f"{r['messages_per_publisher_cpu_s'] or 0:,}",
                      " -> ".join(str(x) for x in r["load_average"]),
                      "; ".join(r["errors"]) or "-")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "runs": rows}, indent=2) + "\n")
    console.print(f"written {args.out}")
    return 0 if all(not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
