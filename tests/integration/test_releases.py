"""Releases that cannot be replayed, and key rotation, on real parts: mosquitto, the hub (REST,
registry, publisher, SQLite), edge agents with real TFLite models and the isolated verifier.

v1 and v2 are published and run; the hub rolls back to v1 (a new release, accepted), then rolls
forward again; the old v1 manifest put back on the broker is refused. Then the signing key is
rotated and the old one retired while one device is offline: it catches up on reconnect, and a
model signed by the retired key is refused by both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from cloud_hub.service import Hub
from edge_agent.agent import Agent
from shared.codec import split
from shared.manifest import Manifest
from shared.messages import Desired, ModelRef, encode
from simulator.broker import Broker
from tests.cloud_hub.conftest import served_hub
from tests.cloud_hub.helpers import publish_wait, tiny_artifact
from tests.edge_agent.support import ScriptedSource, agent_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.hub]


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    with served_hub(broker, tmp_path / "hub", ("dev-a", "dev-b")) as h:
        yield h


def _api(hub: Hub) -> httpx.Client:
    return hub.test_api  # type: ignore[attr-defined, no-any-return]


def _call(hub: Hub, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = _api(hub).request(method, path, json=body)
    assert response.status_code == 200, f"{method} {path}: {response.text}"
    return response.json()


def _desire(hub: Hub, devices: list[str], version: int) -> None:
    for device in devices:
        _call(hub, "PUT", f"/devices/{device}/desired",
              {"model": {"name": "pump-ae", "version": version}})


def _running(agent: Agent, version: int, release: int) -> bool:
    active = agent.detector.active
    return active is not None and (active.manifest.version, active.manifest.release) == (
        version, release)


def _start(broker: Broker, tmp_path: Path, device: str, pinned: Any) -> Agent:
    config = agent_config(broker, tmp_path / device, device, pinned,
                          model={"shadow_windows": 0, "download_timeout_s": 60.0})
    agent = Agent(config, source=ScriptedSource(10**9, rate_hz=20.0))
    agent.start()
    return agent


def test_replayed_releases_are_refused_and_a_rotation_reaches_an_offline_device(
    broker: Broker, hub: Hub, tmp_path: Path
) -> None:
    first_key = hub.signing_key
    for threshold in (0.5, 0.6, 0.7):
        hub.register(tiny_artifact(threshold=threshold), name="pump-ae")
    agents = {d: _start(broker, tmp_path, d, first_key) for d in ("dev-a", "dev-b")}
    # Someone with hub-level broker rights (a stolen credential): the broker lets these
    # writes through, so only the agent stands between them and a model install.
    attacker = broker.client(broker.add_hub("attacker"), protocol=mqtt.MQTTv311)
    attacker.connect(broker.host, broker.port)
    attacker.loop_start()
    try:
        # v1, then v2: releases 1 and 2.
        _call(hub, "POST", "/models/pump-ae/1/publish")
        old_v1 = _signed(hub, 1)
        _desire(hub, list(agents), 1)
        for agent in agents.values():
            wait_until(lambda a=agent: _running(a, 1, 1), 60, "v1 release 1 active")
        _call(hub, "POST", "/models/pump-ae/2/publish")
        _desire(hub, list(agents), 2)
        for agent in agents.values():
            wait_until(lambda a=agent: _running(a, 2, 2), 60, "v2 release 2 active")

        # The hub rolls back to v1: a new release (3) of v1's content, which the devices take.
        rolled = _call(hub, "POST", "/models/pump-ae/1/rollback", {})
        assert rolled["release"] == 3 and sorted(rolled["devices"]) == sorted(agents)
        for agent in agents.values():
            wait_until(lambda a=agent: _running(a, 1, 3), 60, "v1 release 3 active")

        # Forward again to v2 (release 4), then the old v1 manifest is put back: refused.
        _desire(hub, list(agents), 2)
        for agent in agents.values():
            wait_until(lambda a=agent: _running(a, 2, 4), 60, "v2 release 4 active")
        publish_wait(attacker, hub.topics.manifest("pump-ae", 1), old_v1.to_bytes(), retain=True)
        _forge_desired(attacker, hub, "dev-a", 1)
        agent_a = agents["dev-a"]
        wait_until(lambda: "release 1, older than release 4" in str(
            agent_a.status()["last_error"]), 60, "the replayed v1 manifest refused")
        assert agent_a.status()["model_state"] == "failed"
        assert _running(agent_a, 2, 4), "the running model stays"

        # Rotation with dev-b offline: rotate, a release by the new key, retire the old key.
        agents.pop("dev-b").stop(timeout=5)
        rotated = _call(hub, "POST", "/keys/rotate", {"overlap_s": 0})
        new_key = rotated["active"]
        wait_until(lambda: agent_a.status()["trust_version"] == 1, 60, "trust list v1 applied")
        _call(hub, "POST", "/models/pump-ae/3/publish")  # release 5, signed by the new key
        _desire(hub, ["dev-a"], 3)
        wait_until(lambda: _running(agent_a, 3, 5), 60, "v3 (new key) active on dev-a")
        _call(hub, "POST", f"/keys/{first_key.key_id}/retire", {})
        wait_until(lambda: agent_a.status()["trusted_keys"] == [new_key], 60,
                   "the old key dropped on dev-a")

        agents["dev-b"] = agent_b = _start(broker, tmp_path, "dev-b", first_key)  # pinned: old
        wait_until(lambda: agent_b.status()["trust_version"] == 2, 60,
                   "dev-b walked trust lists v1 and v2 on reconnect")
        assert agent_b.status()["trusted_keys"] == [new_key]
        _desire(hub, ["dev-b"], 3)
        wait_until(lambda: _running(agent_b, 3, 5), 60, "v3 (new key) active on dev-b")

        # A model signed by the retired key, with a higher release, is refused by both.
        forged = _signed(hub, 3).replace(version=9, release=99)
        forged = first_key.sign(forged)
        tflite = _tflite(hub, 3)
        for i, chunk in enumerate(split(tflite, forged.chunk_size)):
            publish_wait(attacker, hub.topics.chunk("pump-ae", 9, i), chunk, retain=True)
        publish_wait(attacker, hub.topics.manifest("pump-ae", 9), forged.to_bytes(), retain=True)
        for device, agent in agents.items():
            _forge_desired(attacker, hub, device, 9)
            wait_until(lambda a=agent: "unknown key id" in str(a.status()["last_error"]), 60,
                       f"{device} refuses the model signed by the retired key")
            assert _running(agent, 3, 5)
    finally:
        attacker.loop_stop()
        attacker.disconnect()
        for agent in agents.values():
            agent.stop(timeout=5)


def _signed(hub: Hub, version: int) -> Manifest:
    from sqlmodel import Session

    from cloud_hub.registry.lifecycle import get_model
    from shared.manifest import manifest_from_dict

    with Session(hub.engine) as session:
        return manifest_from_dict(get_model(session, name="pump-ae", version=version).manifest)


def _tflite(hub: Hub, version: int) -> bytes:
    return bytes(_api(hub).get(f"/models/pump-ae/{version}/tflite").content)


def _forge_desired(client: Any, hub: Hub, device: str, version: int) -> None:
    """What only the hub may write, written by someone else (the broker's ACL is another
    layer; the agent must refuse what it leads to by itself)."""
    desired = Desired(device_id=device, model=ModelRef(name="pump-ae", version=version),
                      issued_at=time.time())
    publish_wait(client, hub.topics.desired(device), encode(desired), retain=True)
