"""The fleet scale run's measures (:mod:`simulator.scale`), computed from what it recorded: CPU
time of its processes, what the hub's acknowledgements cost, and where window-to-hub time went.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ack_cost", "ack_totals", "cpu_seconds_of", "own_cpu_seconds", "rounded_percentile",
           "stage_breakdown"]


def cpu_seconds_of(pid: int | None) -> float:
    """utime + stime of another process, from /proc (Linux)."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ack_totals(counters: dict[str, int]) -> dict[str, float]:
    # A counter read, not 1,000 full statuses (a few queries each) while the fleet is measured.
    return {"acks_received": float(counters["acks_received"])}


def ack_cost(hub0: dict[str, Any], hub1: dict[str, Any], dev0: dict[str, float],
             dev1: dict[str, float], *, devices: int, seconds: float) -> dict[str, Any]:
    """What the hub's delivery acknowledgements cost over the measured period: messages and
    bytes the hub published, and what the devices received."""
    def delta(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
        return float(b.get(key, 0)) - float(a.get(key, 0))

    published = delta(hub0, hub1, "acks_published")
    size = delta(hub0, hub1, "ack_bytes")
    streamed = delta(hub0, hub1, "messages_received")
    received = delta(dev0, dev1, "acks_received")
    return {
        "published_per_s": round(published / seconds, 1),
        "bytes_per_s": round(size / seconds),
        "bytes_per_ack": round(size / published, 1) if published else None,
        "device_messages_per_s": round(streamed / seconds, 1),
        "acks_per_device_message": round(published / streamed, 3) if streamed else None,
        "received_per_s": round(received / seconds, 1),
        "received_per_device_per_s": round(received / seconds / devices, 3),
    }


# The stages of window-to-hub, in order: each is the time between two stamps of the same anomaly.
_STAGES = (
    ("window_end_to_read", "ts_end", "picked"),  # the shard ticks the device, it reads
    ("read_to_detected", "picked", "detected"),  # the readings read with it, the model
    ("detected_to_published", "detected", "published"),  # outbox commit, window, paho queue
    ("published_to_written", "published", "written"),  # until the shard's loop wrote the socket
    ("written_to_broker_delivered", "written", "delivered"),  # broker, TLS both ways
    ("broker_delivered_to_hub_stored", "delivered", "stored"),  # hub queue, batch, commit
)


def stage_breakdown(rows: list[dict[str, Any]],
                    anomaly_times: dict[str, dict[tuple[str, int], dict[str, float]]],
                    watched: dict[tuple[str, str, int], float]) -> dict[str, Any]:
    """Where the window-to-hub time of these anomalies (the hub's rows) went, per stage: p50,
    p95, p99, max in ms, and how many anomalies had both stamps. Device stamps come from the
    fleet's wires (``anomaly_times``: device -> (epoch, seq) -> stamps), the broker's from
    :class:`~simulator.scale.AnomalyWatch`, the hub's from its rows."""
    values: dict[str, list[float]] = {name: [] for name, _, _ in _STAGES}
    for r in rows:
        key = (r["device_id"], r["epoch"], int(r["seq"]))
        sent = anomaly_times.get(r["device_id"], {}).get((r["epoch"], int(r["seq"])), {})
        stamps = {"ts_end": r.get("ts_end"), "picked": sent.get("picked"),
                  "detected": r.get("detected_at"),
                  "published": sent.get("published"), "written": sent.get("written"),
                  "delivered": watched.get(key), "stored": r.get("stored_at")}
        for name, start, end in _STAGES:
            a, b = stamps[start], stamps[end]
            if a is not None and b is not None:
                values[name].append((b - a) * 1000.0)
    return {name: {"n": len(v), "p50": rounded_percentile(v, 50),
                   "p95": rounded_percentile(v, 95), "p99": rounded_percentile(v, 99),
                   "max": rounded_percentile(v, 100)} for name, v in values.items()}


def rounded_percentile(values: list[float], q: float) -> float | None:
    """The ``q``th percentile to one decimal; None when there are no values."""
    return round(float(np.percentile(values, q)), 1) if values else None
