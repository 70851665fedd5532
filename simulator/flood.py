"""Telemetry floods for the ingest benchmark: publisher processes that offer a set rate.

Each publisher is a process of its own (so the hub under test never shares an interpreter with
its load), holding one MQTT connection that publishes valid QoS 1 telemetry for a share of the
devices: every device has its own stream epoch and numbers its batches from 0, as an agent does.
A publisher keeps its own window of unacknowledged publishes (paho rescans its whole in-flight
list on every PUBACK, so a large paho window is slower than a small one refilled) and offers
``rate`` messages a second, or as many as the broker takes when ``rate`` is 0. What it reports
is what the broker acknowledged: the seqs a hub must end up storing, each exactly once.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.messages import new_epoch
from shared.topics import Topics

__all__ = ["FloodPlan", "FloodReport", "Publishers", "telemetry_payload"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FloodPlan:
    """What the publishers offer, in total over all of them."""

    devices: int = 100
    readings: int = 10  # rows per telemetry message
    channels: int = 8
    rate: float = 0.0  # messages per second in total; 0: as fast as the broker takes them
    processes: int = 1
    window: int = 64  # unacknowledged publishes per connection
    prefix: str = "edgeloop/v1"
    device_prefix: str = "flood"
    encoding: str = "json"  # the wire encoding of values (see shared.messages)

    def device_ids(self) -> list[str]:
        return [f"{self.device_prefix}-{i:05d}" for i in range(self.devices)]


@dataclass
class FloodReport:
    """What one publisher (or all, merged) got acknowledged by the broker."""

    acked: dict[str, int] = field(default_factory=dict)  # device -> messages acknowledged
    epochs: dict[str, str] = field(default_factory=dict)
    readings_per_message: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(self.acked.values())

    @property
    def readings(self) -> int:
        return self.messages * self.readings_per_message

    def merge(self, other: FloodReport) -> None:
        self.acked.update(other.acked)
        self.epochs.update(other.epochs)
        self.readings_per_message = other.readings_per_message or self.readings_per_message
        self.errors.extend(other.errors)


_ENCODER = msgspec.json.Encoder()


def telemetry_payload(device_id: str, epoch: str, seq: int, channels: list[str],
                      ts: list[float], values: list[list[float]]) -> bytes:
    """A TelemetryBatch payload (schema v2, JSON) built without the struct's checks (the
    hub's decoder checks it strictly; a broken payload shows up there as a dead letter)."""
    return _ENCODER.encode({"v": 2, "device_id": device_id, "epoch": epoch, "seq": seq,
                            "floor": 0, "channels": channels, "ts": ts, "values": values})


class _Stream:
    """One device's stream: its epoch and next seq, and a few value blocks reused."""

    def __init__(self, device_id: str, plan: FloodPlan, rng: random.Random, t0: float) -> None:
        self.device_id = device_id
        self.epoch = new_epoch()
        self.seq = 0
        self.t0 = t0
        self.channels = [f"ch{c}" for c in range(plan.channels)]
        self.blocks = [[[rng.gauss(20.0, 5.0) for _ in range(plan.channels)]
                        for _ in range(plan.readings)] for _ in range(4)]
        self.readings = plan.readings

    def next_payload(self, encoder: Callable[..., bytes]) -> bytes:
        seq = self.seq
        self.seq += 1
        start = self.t0 + seq * self.readings * 0.1
        ts = [start + 0.1 * k for k in range(self.readings)]
        return encoder(self.device_id, self.epoch, seq, self.channels, ts,
                       self.blocks[seq % len(self.blocks)])


def _publisher_main(plan: FloodPlan, devices: list[str], connect: dict[str, Any],
                    rate: float, stop: Any, started: Any, out: Any, index: int) -> None:
    """The body of one publisher process: publish until ``stop`` is set, then wait for the
    last acknowledgements and send a :class:`FloodReport` on ``out``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topics = Topics(plan.prefix)
    rng = random.Random(index)
    t0 = time.time() - 86_400.0
    streams = [_Stream(d, plan, rng, t0) for d in devices]
    topic_of = {s.device_id: topics.telemetry(s.device_id) for s in streams}
    report = FloodReport(epochs={s.device_id: s.epoch for s in streams},
                         readings_per_message=plan.readings)
    window = threading.Semaphore(plan.window)
    failures: list[str] = []
    sent: dict[str, int] = dict.fromkeys(devices, 0)
    connected = threading.Event()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=connect.get("client_id", ""),
                         protocol=mqtt.MQTTv5)
    if connect.get("username"):
        client.username_pw_set(connect["username"], connect.get("password"))
    if connect.get("ca_file"):
        from shared.tls import client_context

        client.tls_set_context(client_context(connect["ca_file"]))
    client.max_inflight_messages_set(plan.window)
    client.max_queued_messages_set(0)

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            connected.set()

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        # Not under a lock of ours: paho calls this holding its own, which publish() takes.
        if rc.is_failure:
            failures.append(f"publish {mid} refused: {rc}")
        window.release()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(connect["host"], connect["port"], keepalive=60)
    client.loop_start()
    if not connected.wait(30):
        report.errors.append(f"publisher {index}: could not connect")
        out.send(report)
        return
    started.set()
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    i = 0
    encoder = telemetry_payload
    while not stop.is_set():
        if interval:
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.05))
                continue
            next_at = max(next_at + interval, now - 1.0)  # no burst after a stall
        if not window.acquire(timeout=0.5):
            continue
        stream = streams[i % len(streams)]
        i += 1
        client.publish(topic_of[stream.device_id], stream.next_payload(encoder), qos=1)
        sent[stream.device_id] += 1
    # Every permit back: every publish acknowledged (a lost connection resends them).
    deadline = time.monotonic() + 120
    held = 0
    while held < plan.window and time.monotonic() < deadline:
        if window.acquire(timeout=0.5):
            held += 1
    if held < plan.window:
        report.errors.append(f"publisher {index}: {plan.window - held} publish(es) never "
                             "acknowledged")
    report.errors.extend(failures[:10])
    report.acked = dict(sent)
    client.disconnect()
    client.loop_stop()
    out.send(report)


class Publishers:
    """``plan.processes`` publisher processes; ``start()``, ``set`` nothing, ``stop()``."""

    def __init__(self, plan: FloodPlan, connect: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.plan = plan
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        devices = plan.device_ids()
        n = max(1, plan.processes)
        shares = [devices[i::n] for i in range(n)]
        connects = connect if isinstance(connect, list) else [
            {**connect, "client_id": f"{connect.get('client_id', 'flood')}-{i}"}
            for i in range(n)]
        self._pipes: list[Any] = []
        self._started: list[Any] = []
        self.procs: list[mp.process.BaseProcess] = []
        for i, share in enumerate(shares):
            receive, send = ctx.Pipe(duplex=False)
            started = ctx.Event()
            proc = ctx.Process(
                target=_publisher_main, name=f"flood-{i}", daemon=True,
                args=(plan, share, connects[i], plan.rate / n, self._stop, started, send, i))
            self._pipes.append(receive)
            self._started.append(started)
            self.procs.append(proc)

    def start(self, timeout: float = 60.0) -> None:
        for proc in self.procs:
            proc.start()
        deadline = time.monotonic() + timeout
        for started, proc in zip(self._started, self.procs, strict=True):
            while not started.wait(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"publisher {proc.name} did not start")

    def stop(self, timeout: float = 180.0) -> FloodReport:
        """Stop publishing; returns what the broker acknowledged, all publishers merged."""
        self._stop.set()
        merged = FloodReport(readings_per_message=self.plan.readings)
        for pipe, proc in zip(self._pipes, self.procs, strict=True):
            if proc.pid is None:
                continue
            if pipe.poll(timeout):
                merged.merge(pipe.recv())
            else:
                merged.errors.append(f"publisher {proc.name} sent no report")
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        return merged

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]
