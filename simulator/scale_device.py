"""A fleet-scale device: the agent's own core with its own collaborators, ticked by a shard.

Every :class:`ScaleDevice` is an :class:`~edge_agent.core.DeviceCore` (the code ``edge-agent
run`` runs) with its own collaborators: a durable SQLite outbox, an on-disk model store and
trust ring, the TFLite loader, a simulated source, and its own MQTT v5 connection over TLS with
its own credential (client id = device id, persistent session, retained will and birth).
Models reach it as they reach an agent: ``desired`` → retained manifest → retained chunks →
signature, size and hash checks → shadow run → swap → ``reported``.

What differs from ``edge_agent.agent.Agent`` is only the transport and the threads: instead of
four threads per device, a :class:`~simulator.shards.Shard` thread ticks it when it is due and
drives its connection (a :class:`~simulator.shard_wire.ShardWire`) with hundreds of others, and
the signature check runs in-process (this process has the cryptography library loaded anyway)
instead of in a child per check.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent.core import DeviceCore
from edge_agent.models.loader import load_model
from edge_agent.models.store import ModelStore
from edge_agent.models.updater import UNLIMITED
from edge_agent.ports import CoreStatus
from edge_agent.telemetry.outbox import Outbox
from edge_agent.trust.keyring import open_keyring
from shared.keys import SignedParts
from shared.manifest import Manifest
from shared.messages import DeviceStatus
from shared.signing import verify_manifest, verify_parts
from shared.topics import DeviceTopic
from simulator.fleet import DeviceSpec, agent_config
from simulator.shard_wire import ShardWire
from simulator.shards import RoundBudget
from simulator.source import SimulatedSource

__all__ = ["ScaleDevice"]

_MODELS = "/models/"
_MANIFEST = "/manifest"
_DESIRED = f"/{DeviceTopic.DESIRED.value}"

# The core's own timers (batch age, update timeouts, heartbeat, probes) need no more; it also
# ticks after each reading (a shadow run ends on a reading).
_CORE_TICK_S = 0.5
# How soon a device whose reading was due and did not come looks again.
_IDLE_POLL_S = 0.1
_READING_MARGIN_S = 0.001
# The simulated sensor makes its readings this many at a time, handed out when due: one
# reading made alone cost as much numpy work as a block, a quarter of a device's tick.
_SOURCE_LOOKAHEAD = 32


def _verify_manifest(manifest: Manifest, keys: Mapping[str, bytes]) -> None:
    verify_manifest(manifest, keys)


def _verify_all(checks: Sequence[SignedParts]) -> list[bool]:
    return [verify_parts(c) for c in checks]


class _Turn:
    """A device's share of its shard's :class:`~simulator.shards.RoundBudget` (the core's
    :class:`~edge_agent.models.updater.StepBudget`)."""

    def __init__(self, budget: RoundBudget, device: ScaleDevice) -> None:
        self._budget, self._device = budget, device

    def take(self) -> bool:
        return self._budget.take_for(self._device)


class ScaleDevice:
    """A device core, its source and its :class:`ShardWire`; one shard thread ticks it."""

    def __init__(self, spec: DeviceSpec, *, host: str, port: int, state_dir: Path,
                 trust_keys: dict[str, str], topic_prefix: str, auth: Mapping[str, Any],
                 overrides: dict[str, dict[str, Any]],
                 budget: RoundBudget | None = None) -> None:
        """``budget``: its shard's model-update steps per round (none: every step at once)."""
        self.spec = spec
        self.device_id = spec.device_id
        self.config = agent_config(spec, mqtt_host=host, mqtt_port=port, state_dir=state_dir,
                                   trust_keys=trust_keys, topic_prefix=topic_prefix,
                                   overrides=overrides, auth=dict(auth))
        cfg = self.config
        state_dir.mkdir(parents=True, exist_ok=True)
        self.source = SimulatedSource(**spec.source_options(), lookahead=_SOURCE_LOOKAHEAD)
        self.channels = list(self.source.channels)
        self.outbox = Outbox(state_dir / "outbox.db", synchronous=cfg.outbox.synchronous,
                             max_bytes=cfg.outbox.max_bytes, ack_timeout_s=cfg.outbox.ack_timeout_s,
                             probe_max_s=cfg.outbox.probe_max_s)
        trust = open_keyring(cfg.trust.keys, state_dir, verify=_verify_all)
        topics = cfg.topics()
        holder: list[DeviceCore] = []
        self.wire = ShardWire(self.device_id, host=host, port=port, keepalive=cfg.mqtt.keepalive,
                              auth=auth, will=(topics.status(self.device_id),
                                               lambda: holder[0].status_payload(
                                                   DeviceStatus.OFFLINE)))
        self.wire.owner = self
        self.client = self.wire.client  # what a shard drives
        # each reported state, and when each desired, manifest and chunk was read from the
        # socket ("desired_read", "manifest_read", "chunk_read"), time.monotonic()
        self.timeline: list[tuple[str, float]] = []
        channels = self.channels
        self.core = DeviceCore(
            cfg, channels=channels, outbox=self.outbox,
            store=ModelStore(state_dir / "models", trust, verify=_verify_manifest),
            trust=trust, wire=self.wire, agent_version="simulator-scale",
            on_queued=self._queued,
            on_report=lambda report: self.timeline.append((report.state.value,
                                                           time.monotonic())),
            loader=lambda manifest, data: load_model(manifest, data, channels=channels),
            update_budget=_Turn(budget, self) if budget is not None else UNLIMITED,
        )
        holder.append(self.core)
        self.core.source_bad_readings = lambda: self.source.bad_readings
        self.core.start()
        self._next_reading_at = 0.0
        self._next_core_tick = 0.0
        self._send = True  # something may be waiting for the window
        self._final: CoreStatus | None = None
        self.picked_at: float | None = None  # when the last readings were read (epoch s)

    def _queued(self) -> None:
        self._send = True

    def tick(self, now: float) -> None:
        """One round: what the wire received, readings that are due, the core's timers, then
        what the window lets go out (only when something may have changed it)."""
        core, events = self.core, self.wire.events
        moved = bool(events)
        while events:
            event = events.popleft()
            kind = event[0]
            if kind == "puback":
                core.on_puback(event[1], event[2], event[3])
            elif kind == "message":
                topic = event[1]
                core.on_message(topic, event[2], retain=event[3], properties=event[5])
                # a rollout's steps (simulator.rollout_phases)
                step = ("desired" if topic.endswith(_DESIRED) else None) if _MODELS not in topic \
                    else "manifest" if topic.endswith(_MANIFEST) else "chunk"
                if step is not None:
                    self.timeline.append((f"{step}_read", event[4]))
            elif kind == "up":
                core.on_link_up(event[1])
            else:
                core.on_link_down(event[1])
        read = False
        if time.time() >= self._next_reading_at:  # skip the source's lock until one is due
            self.picked_at = time.time()
            readings = self.source.read(0.0)
            if readings:
                core.on_readings(readings)
                read = True
            self._next_reading_at = self.source.next_ts
        if read or now >= self._next_core_tick or core.updater.step_waiting:
            if now >= self._next_core_tick:
                self._next_core_tick = now + _CORE_TICK_S
                moved = True  # probes are due on the clock
            core.tick()
        if moved or self._send:
            self._send = False
            core.send_now()
        self.wire.reconnect_if_due(now)

    def next_due(self, now: float) -> float:
        """When (``time.monotonic()``) this device next has something to do: its next reading,
        its core's timers, a reconnect."""
        at = self._next_core_tick
        wait = self._next_reading_at - time.time()
        # A reading that was due but did not come (a paused or closed source) is looked for
        # again on the core's pace, not in a busy loop. A reading's time is an epoch float whose
        # rounding is ~0.2 us: ticked exactly at it, the source may count it as not yet due and
        # the device would wait for the idle poll, so the tick comes a little after it.
        at = min(at, now + wait + _READING_MARGIN_S if wait > 0 else now + _IDLE_POLL_S)
        retry = self.wire.retry_at
        if retry > 0:
            at = min(at, retry)
        return at

    def status(self) -> CoreStatus:
        if self._final is not None:
            return self._final
        return self.core.status()

    def close(self) -> None:
        """Keep the final status, then close the outbox."""
        self._final = self.core.status()
        self.outbox.close()
