"""A fleet of real edge agents in this process, each reading its own simulated source.

Every device is an ``edge_agent.agent.Agent`` (the same code ``edge-agent run`` runs) with its own
MQTT connection, state directory and SQLite outbox; only its sensors are simulated. The fleet
keeps the sources, so the simulator can inject faults and read the ground truth.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.agent import STATUS_FILE, Agent
from edge_agent.config import AgentConfig, config_from_dict
from simulator.scoring import GroundTruth
from simulator.source import SimulatedSource

__all__ = ["DeviceSpec", "Fleet", "SimDevice", "agent_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: its id, profile and how its sensors behave."""

    device_id: str
    profile: str = "pump"
    seed: int = 0
    rate_hz: float = 10.0
    history_s: float = 0.0
    day_period_s: float | None = None  # None: the profile's own (see simulator.profiles)
    load_dwell_s: float | None = None

    def source_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "profile": self.profile,
            "seed": self.seed,
            "rate_hz": self.rate_hz,
            "device_id": self.device_id,
            "history_s": self.history_s,
        }
        if self.day_period_s is not None:
            options["day_period_s"] = self.day_period_s
        if self.load_dwell_s is not None:
            options["load_dwell_s"] = self.load_dwell_s
        return options


def agent_config(
    spec: DeviceSpec,
    *,
    mqtt_host: str,
    mqtt_port: int,
    state_dir: Path,
    trust_keys: dict[str, str],
    topic_prefix: str = "edgeloop/v1",
    overrides: dict[str, dict[str, Any]] | None = None,
    auth: dict[str, Any] | None = None,
) -> AgentConfig:
    """The agent configuration a simulated device runs with (validated like a TOML file);
    ``auth``: the device's ``[mqtt]`` login keys (tls, tls_ca_file, username, password)."""
    raw: dict[str, Any] = {
        "device_id": spec.device_id,
        "state_dir": str(state_dir),
        "mqtt": {"host": mqtt_host, "port": mqtt_port, "topic_prefix": topic_prefix,
                 "keepalive": 10, "reconnect_initial_s": 0.2, "reconnect_max_s": 2.0,
                 **(auth or {})},
        "trust": {"keys": dict(trust_keys)},
        "source": {"type": "simulated", "options": spec.source_options()},
        "telemetry": {"batch_max_readings": 200, "batch_max_age_s": 0.5},
        "heartbeat": {"interval_s": 5.0},
        "model": {"shadow_windows": 0},
        "log": {"level": "WARNING"},
        "daemon": {"grace_s": 15.0},
    }
    for section, values in (overrides or {}).items():
        if isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    return config_from_dict(raw)


@dataclass
class SimDevice:
    spec: DeviceSpec
    source: SimulatedSource
    agent: Agent
    started: bool = False
    final_status: dict[str, Any] | None = None

    @property
    def device_id(self) -> str:
        return self.spec.device_id


def _final_status(device: SimDevice) -> dict[str, Any]:
    """The status a stopped agent wrote to its state directory as it stopped."""
    path = Path(device.agent.config.state_dir) / STATUS_FILE
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("device %s: cannot read its final status from %s: %s",
                    device.device_id, path, exc)
        return {"device_id": device.device_id}
    return record


@dataclass
class Fleet:
    """Agents on one broker, trusting the hub's signing key(s); ``mqtt_auth`` gives each device
    its login (e.g. ``Broker.device_auth``, or the hub's enrollment): none on an anonymous
    broker."""

    mqtt_host: str
    mqtt_port: int
    state_root: Path
    trust_keys: dict[str, str]
    topic_prefix: str = "edgeloop/v1"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    mqtt_auth: Callable[[str], dict[str, Any]] | None = None
    devices: dict[str, SimDevice] = field(default_factory=dict)

    def add(self, spec: DeviceSpec, *, mqtt_port: int | None = None) -> SimDevice:
        """A new device; ``mqtt_port`` overrides the broker port (e.g. a chaos proxy's)."""
        if spec.device_id in self.devices:
            raise ValueError(f"device {spec.device_id!r} is already in the fleet")
        config = agent_config(
            spec, mqtt_host=self.mqtt_host, mqtt_port=mqtt_port or self.mqtt_port,
            state_dir=self.state_root / spec.device_id, trust_keys=self.trust_keys,
            topic_prefix=self.topic_prefix, overrides=self.overrides,
            auth=self.mqtt_auth(spec.device_id) if self.mqtt_auth else None,
        )
        source = SimulatedSource(**spec.source_options())
        device = SimDevice(spec=spec, source=source, agent=Agent(config, source=source))
        self.devices[spec.device_id] = device
        return device

    def start(self, device_ids: Iterable[str] | None = None) -> None:
        for device in self._select(device_ids):
            if not device.started:
                device.agent.start()
                device.started = True

    def stop(self, device_ids: Iterable[str] | None = None, timeout: float = 20.0) -> None:
        """Stop agents gracefully (they flush their outbox within their grace period)."""
        for device in self._select(device_ids):
            if device.started:
                device.agent.stop(timeout=timeout)
                device.final_status = _final_status(device)
                device.started = False
                device.source.close()

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {
            d.device_id: (d.agent.status() if d.started else (d.final_status or {}))
            for d in self.devices.values()
        }

    def wait_until(
        self, predicate: Callable[[dict[str, dict[str, Any]]], bool], timeout: float,
        poll_s: float = 0.2,
    ) -> bool:
        """Poll agent statuses until ``predicate`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.statuses()):
                return True
            time.sleep(poll_s)
        return predicate(self.statuses())

    def ground_truth(self) -> list[GroundTruth]:
        return [t for d in self.devices.values() for t in d.source.ground_truth()]

    def samples_generated(self) -> dict[str, int]:
        return {d.device_id: d.source.samples_generated for d in self.devices.values()}

    def restart(self, device_id: str) -> None:
        """Start a stopped device again with a fresh Agent on the same state and source."""
        device = self.devices[device_id]
        if device.started:
            return
        device.source.reopen()
        device.agent = Agent(device.agent.config, source=device.source)
        device.agent.start()
        device.started = True

    def _select(self, device_ids: Iterable[str] | None) -> list[SimDevice]:
        if device_ids is None:
            return list(self.devices.values())
        return [self.devices[i] for i in device_ids]
