"""How the agent's link recovers, for ``bench/edge_daemon.py``: an outbox holding an outage's
telemetry replayed after the reconnect, and how far apart many links reconnect after a broker
restart."""

from __future__ import annotations

import queue
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.comms.mqtt import LinkEvent, LinkSettings, MqttLink
from edge_agent.telemetry.outbox import Outbox, Stream
from edge_agent.telemetry.sender import Sender
from shared.messages import TelemetryBatch, encode
from simulator.edge_bench.private_broker import device_login, private_broker, wait_for


def measure_replay(total_readings: int, batch: int = 100) -> dict[str, Any]:
    broker = private_broker().start()
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
        link = MqttLink(LinkSettings(client_id="bench-r", **device_login(broker, "bench-r")),
                        control=control)
        sender = Sender.for_outbox(outbox, link, control, max_inflight=100)
        started = time.monotonic()
        link.start()
        sender.start()
        # The broker's PUBACK of every message (no hub here to acknowledge them end to end).
        messages = -(-total_readings // batch)
        wait_for(lambda: outbox.delivered() == messages, 300, "every message PUBACKed")
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
    broker = private_broker()
    broker.add_devices(f"bench-{i:04d}" for i in range(n))  # before start: into the file
    broker.start()
    links = [
        MqttLink(LinkSettings(client_id=f"bench-{i:04d}", **device_login(broker, f"bench-{i:04d}"),
                              keepalive=30, reconnect_initial_s=initial_s,
                              reconnect_max_s=max_s))
        for i in range(n)
    ]
    try:
        for link in links:
            link.start()
        wait_for(lambda: all(link.connected for link in links), 120, "all links connected")
        broker.stop()
        wait_for(lambda: not any(link.connected for link in links), 60, "all links down")
        broker.start()
        back_at = time.monotonic()
        wait_for(lambda: all(link.connections >= 2 for link in links), 4 * max_s + 60,
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
