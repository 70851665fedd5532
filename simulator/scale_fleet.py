"""Fleet-scale mode: a thousand devices in one process, each running the agent's own core.

Each device is a :class:`~simulator.scale_device.ScaleDevice` (the agent's
:class:`~edge_agent.core.DeviceCore` with its own outbox, model store, trust ring, source and
TLS connection). :class:`ScaleFleet` spreads them over a few :class:`~simulator.shards.Shard`
threads, each driving hundreds of paho clients through one ``epoll`` selector
(:mod:`simulator.shard_wire`), connects them, and stops them with their outboxes drained.
"""

from __future__ import annotations

import gc
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.ports import CoreStatus
from shared.messages import DeviceStatus
from simulator.fleet import DeviceSpec
from simulator.scale_device import ScaleDevice
from simulator.shards import Shard

__all__ = ["ScaleFleet"]

# What a fleet-scale device runs with, beyond simulator.fleet.agent_config: no drift monitor
# (it is per-reading work that a thousand devices in one process would pay a thousand times and
# the runs here do not measure), a heartbeat per 30 s, the outbox without an fsync per commit.
SCALE_OVERRIDES: dict[str, dict[str, Any]] = {
    "drift": {"enabled": False},
    "heartbeat": {"interval_s": 30.0},
    "outbox": {"synchronous": "normal", "max_inflight": 20},
    "telemetry": {"batch_max_readings": 100, "batch_max_age_s": 2.0},
    "model": {"shadow_windows": 5},
    # The agent's default keepalive (the simulator's agents use 10 s): a thousand devices in one
    # process on a loaded machine can be held off the CPU for longer than 15 s (1.5 keepalives,
    # when the broker drops a silent client), and the reconnect storm that follows costs more.
    "mqtt": {"keepalive": 30},
}
# How often the fleet's start, connecting devices one after another, drives the open sockets.
_CONNECT_PUMP_S = 1.0
# Model-update steps per shard round (simulator.shards.RoundBudget): a staging (interpreter
# build) is ~2-4 ms of a fleet worker's CPU, so a round's steps stay within a few tens of ms.
# bench/rollout.py at load 5-6, two runs each (seconds_to_full; tick lag p99 during the rollout):
# 4 steps 7.8/7.5 s (0.76/0.74 s), 8: 4.7/7.8 s (0.57/1.03 s), 16: 4.6/7.2 s (0.26/0.58 s),
# 32: 5.0/5.5 s (0.42/0.43 s), no bound: 4.7/7.0 s (1.0/2.3 s).
UPDATE_STEPS_PER_ROUND = 16


@dataclass
class ScaleFleet:
    """Many :class:`ScaleDevice` on one broker, split over ``shards`` threads; ``mqtt_auth``
    gives each device its login (e.g. ``Broker.device_auth``)."""

    mqtt_host: str
    mqtt_port: int
    state_root: Path
    trust_keys: dict[str, str]
    topic_prefix: str = "edgeloop/v1"
    shards: int = 4
    tick_s: float = 0.1  # the longest a shard's loop sleeps (devices are ticked when due)
    # model-update steps (signature checks, stagings) a shard runs per round; 0: no bound
    update_steps_per_round: int = UPDATE_STEPS_PER_ROUND
    mqtt_auth: Callable[[str], dict[str, Any]] | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, ScaleDevice] = field(default_factory=dict)
    stopped: bool = False
    _shards: list[Shard] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_root.mkdir(parents=True, exist_ok=True)
        self._shards = [Shard(f"scale-shard-{i}", self.tick_s,
                              update_steps_per_round=self.update_steps_per_round)
                        for i in range(self.shards)]

    def add(self, spec: DeviceSpec,
            overrides: dict[str, dict[str, Any]] | None = None) -> ScaleDevice:
        """A new device; ``overrides``: its own config sections, over the fleet's."""
        if spec.device_id in self.devices:
            raise ValueError(f"device {spec.device_id!r} is already in the fleet")
        mine = overrides or {}
        overrides = {k: {**SCALE_OVERRIDES.get(k, {}), **self.overrides.get(k, {}),
                         **mine.get(k, {})}
                     for k in {*SCALE_OVERRIDES, *self.overrides, *mine}}
        shard = self._shards[len(self.devices) % len(self._shards)]
        device = ScaleDevice(spec, host=self.mqtt_host, port=self.mqtt_port,
                             state_dir=self.state_root / spec.device_id,
                             trust_keys=self.trust_keys, topic_prefix=self.topic_prefix,
                             auth=self.mqtt_auth(spec.device_id) if self.mqtt_auth else {},
                             overrides=overrides, budget=shard.budget)
        device.wire.shard = shard
        shard.devices.append(device)
        self.devices[spec.device_id] = device
        return device

    def start(self) -> None:
        """Connect every device (blocking TCP and TLS connects), then start the shards.

        Between connects this thread drives the sockets already open (CONNACKs, PINGREQs):
        on a busy machine a thousand TLS handshakes take longer than the keepalive, and the
        broker would drop the first devices before the shards ever read their CONNACK."""
        pumped = time.monotonic()
        for device in self.devices.values():
            device.wire.connect()
            if time.monotonic() - pumped >= _CONNECT_PUMP_S:
                self._drive_sockets(misc=True)
                pumped = time.monotonic()
        self._drive_sockets(misc=True)
        # A thousand devices are a few hundred thousand long-lived objects: each full collection
        # would walk them all while every shard waits (150 ms and more, measured). They live as
        # long as the fleet: out of the collector's sight.
        gc.collect()
        gc.freeze()
        for shard in self._shards:
            shard.thread.start()

    def _drive_sockets(self, *, misc: bool = False) -> None:
        """Read and write what the sockets have ready, from this thread (the shards are not
        running); ``misc``: keepalive too."""
        for shard in self._shards:
            shard.flush_writes()
            for key, mask in shard.selector.select(0) if shard.selector.get_map() else []:
                device = key.data
                if mask & selectors.EVENT_READ:
                    device.client.loop_read()
                    sock: Any = key.fileobj  # TLS may hold decrypted bytes epoll cannot see
                    while getattr(sock, "pending", None) is not None and sock.pending() > 0:
                        device.client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    device.client.loop_write()
            if misc:
                for device in shard.devices:
                    device.client.loop_misc()
            shard.flush_writes()

    def connected(self) -> int:
        return sum(d.wire.connected for d in self.devices.values())

    def wait_until(self, predicate: Callable[[], bool], timeout: float,
                   poll_s: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll_s)
        return predicate()

    def wait_connected(self, timeout: float) -> int:
        self.wait_until(lambda: self.connected() == len(self.devices), timeout, 0.1)
        return self.connected()

    def stop(self, flush_timeout: float = 30.0) -> bool:
        """Close the sources, stop the shards, write the open batches, drive the sockets from
        here until every outbox is acknowledged (or time runs out), then say offline and
        disconnect. True when every outbox drained."""
        if self.stopped:
            return True
        self.stopped = True
        for device in self.devices.values():
            device.source.close()
        for shard in self._shards:
            shard.stop_event.set()
        for shard in self._shards:
            if shard.thread.is_alive():
                shard.thread.join(10.0)
        for device in self.devices.values():
            device.core.flush()
        deadline = time.monotonic() + flush_timeout
        drained = False
        while time.monotonic() < deadline:
            self._drive_sockets()
            now = time.monotonic()
            for device in self.devices.values():
                device.tick(now)
            if all(d.outbox.depth() == 0 for d in self.devices.values()):
                drained = True
                break
            time.sleep(0.02)
        for device in self.devices.values():
            topic = device.core.topics.status(device.device_id)
            device.wire.close((topic, device.core.status_payload(DeviceStatus.OFFLINE)))
            device.close()
        return drained

    def statuses(self) -> dict[str, CoreStatus]:
        return {d.device_id: d.status() for d in self.devices.values()}

    def samples_generated(self) -> dict[str, int]:
        return {d.device_id: d.source.samples_generated for d in self.devices.values()}

    def reset_tick_lag(self) -> None:
        for shard in self._shards:
            shard.reset_lag()

    def tick_lags(self) -> list[float]:
        """How late each due tick was since the last reset, seconds, every shard."""
        return [lag for shard in self._shards for lag in shard.lags]

    def tick_lag_mark(self) -> list[int]:
        """Where each shard's lag samples are now (for :meth:`tick_lags_since`)."""
        return [len(shard.lags) for shard in self._shards]

    def tick_lags_since(self, mark: list[int]) -> list[float]:
        """The lags noted since ``mark`` (a reset in between: since the reset)."""
        return [lag for shard, start in zip(self._shards, mark, strict=True)
                for lag in shard.lags[start if start <= len(shard.lags) else 0:]]

    def max_tick_lag_s(self) -> float:
        return max((s.max_lag_s for s in self._shards), default=0.0)
