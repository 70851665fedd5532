"""Per-device variants of one rollout on real parts (issue 12): mosquitto with TLS and a
credential per device, the hub (REST, registry, releases, rollout controller, SQLite), and two
edge agents with real TFLite models.

The version keeps its int8 (published) and float32 variants, both signed. One agent reports
litert (XNNPACK runs int8), the other tflite-runtime 2.14 (it does not): the rollout sends each
its own variant, both end up active with verified signatures, and the hub says who got which and
why. A ``desired`` naming a variant that does not exist is refused by the agent, reported, and
its loop goes on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_hub.service import Hub
from edge_agent.agent import Agent
from shared.manifest import parse_manifest
from shared.messages import Desired, ModelRef, encode
from shared.signing import load_public_key, verify_manifest
from simulator.broker import Broker
from tests.cloud_hub.conftest import served_hub
from tests.cloud_hub.helpers import (
    publish_wait,
    variant_artifact,
)
from tests.edge_agent.support import ScriptedSource, agent_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.hub]
RUNTIMES = {
    "dev-lite": {"package": "litert", "version": "2.3.0", "xnnpack_int8": True},
    "dev-legacy": {"package": "tflite-runtime", "version": "2.14.0", "xnnpack_int8": False},
}


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    with served_hub(broker, tmp_path / "hub", tuple(RUNTIMES)) as h:
        yield h


def _call(hub: Hub, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = hub.test_api.request(method, path, json=body)  # type: ignore[attr-defined]
    assert response.status_code in (200, 201), f"{method} {path}: {response.text}"
    return response.json()


def _runtime_known(hub: Hub, device: str) -> bool:
    response = hub.test_api.get(f"/devices/{device}")  # type: ignore[attr-defined]
    return response.status_code == 200 and bool(response.json()["runtime"])  # 404: not yet


def _start(broker: Broker, tmp_path: Path, device: str, hub: Hub) -> Agent:
    config = agent_config(broker, tmp_path / device, device, hub.signing_key,
                          model={"shadow_windows": 0, "download_timeout_s": 60.0,
                                 "simulated_runtime": RUNTIMES[device]})
    agent = Agent(config, source=ScriptedSource(10**9, rate_hz=20.0))
    agent.start()
    return agent


def test_two_runtimes_get_their_own_variant_of_one_rollout(
    broker: Broker, hub: Hub, tmp_path: Path
) -> None:
    name, version = hub.register(variant_artifact(threshold=50.0), name="pump-ae")
    published = _call(hub, "POST", f"/models/{name}/{version}/publish")
    assert published["quantization"] == "int8"
    [kept] = _call(hub, "GET", f"/models/{name}/{version}")["variants"]
    assert kept["quantization"] == "float32"
    assert kept["manifest"]["release"] == published["manifest"]["release"]
    agents = {d: _start(broker, tmp_path, d, hub) for d in RUNTIMES}
    try:
        wait_until(lambda: all(_runtime_known(hub, d) for d in agents), 30,
                   "both runtimes reported to the hub")
        rollout = _call(hub, "POST", "/rollouts", {
            "model": {"name": name, "version": version}, "target": {"devices": list(agents)},
            "policy": {"canary_size": 1, "wave_size": 1, "min_observation_s": 0.5}})
        wait_until(lambda: _call(hub, "GET", f"/rollouts/{rollout['id']}")["status"]
                   in ("succeeded", "rolled_back", "aborted"), 60, "the rollout to end")
        view = _call(hub, "GET", f"/rollouts/{rollout['id']}")
        assert view["status"] == "succeeded", view["reason"]
        assert view["variants"] == {"int8": 1, "float32": 1}
        sent = {d["device_id"]: d["variant"] for d in view["devices"]}
        assert sent == {"dev-lite": "int8", "dev-legacy": "float32"}

        key = load_public_key(hub.signing_key.public_b64())
        for device, quantization in sent.items():
            agent = agents[device]
            active = agent.detector.active
            assert active is not None and active.manifest.quantization.value == quantization
            verify_manifest(active.manifest, {hub.signing_key.key_id: key})
            manifest, data = agent.core.store.read_verified(name, version)  # signature again
            assert manifest.sha256 == active.manifest.sha256 and len(data) == manifest.size
            shown = _call(hub, "GET", f"/devices/{device}")
            assert shown["active_model"]["variant"] == quantization
            assert shown["desired_model"]["variant"] == quantization
            assert shown["in_sync"]
        legacy = _call(hub, "GET", "/devices/dev-legacy")["desired_model"]
        assert "XNNPACK does not run int8" in legacy["variant_reason"]
        assert agents["dev-legacy"].detector.active.manifest.release == (  # type: ignore[union-attr]
            agents["dev-lite"].detector.active.manifest.release)  # type: ignore[union-attr]

        # The variant's manifest is retained at its own topic, signed over its quantization.
        f32_topic = hub.topics.manifest(name, version, "float32")
        retained = _retained_manifest(broker, f32_topic)
        assert retained.quantization.value == "float32"
        verify_manifest(retained, {hub.signing_key.key_id: key})

        # The hub refuses to send a variant the version does not keep ...
        refused = hub.test_api.put("/devices/dev-lite/desired",  # type: ignore[attr-defined]
                                   json={"model": {"name": name, "version": version,
                                                   "variant": "float16"}})
        assert refused.status_code == 409 and "no variant 'float16'" in refused.text
        # ... and an agent refuses one that does not exist, says so, and keeps running.
        _forge_desired(broker, hub, "dev-lite", ModelRef(name=name, version=version + 1,
                                                         variant="int4"))
        lite = agents["dev-lite"]
        wait_until(lambda: "does not exist" in str(lite.status()["last_error"]), 30,
                   "the unknown variant refused")
        wait_until(lambda: _call(hub, "GET", "/devices/dev-lite")["reported_state"] == "failed",
                   30, "the refusal reported to the hub")
        assert "variant 'int4'" in _call(hub, "GET", "/devices/dev-lite")["reported_error"]
        readings = lite.status()["readings"]
        wait_until(lambda: lite.status()["readings"] > readings, 30, "the agent goes on")
        assert lite.detector.active is not None and lite.detector.active.manifest.version == (
            version)
    finally:
        for agent in agents.values():
            agent.stop()


def _retained_manifest(broker: Broker, topic: str) -> Any:
    got: list[bytes] = []
    client = broker.client(broker.add_hub("variant-reader"), protocol=mqtt.MQTTv311)
    client.on_message = lambda c, u, msg: got.append(msg.payload)
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, 1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        wait_until(lambda: got, 10, f"the retained manifest at {topic}")
    finally:
        client.loop_stop()
        client.disconnect()
    return parse_manifest(got[0])


def _forge_desired(broker: Broker, hub: Hub, device: str, model: ModelRef) -> None:
    """A desired the hub would refuse to write (the variant does not exist), written by an
    identity with hub rights: the agent must refuse it by itself."""
    client = broker.client(broker.add_hub("variant-writer"), protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        publish_wait(client, hub.topics.desired(device),
                     encode(Desired(device_id=device, model=model, issued_at=time.time())),
                     retain=True)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_running_agent_switches_to_another_variant_of_its_version_in_place(
    broker: Broker, hub: Hub, tmp_path: Path
) -> None:
    """The hub names another variant of the version a device runs (an admin here; the hub's
    re-pick once a runtime is known does the same): the agent fetches it beside the running
    one, checks it, swaps it in, and the hub shows the device in sync on the new variant."""
    name, version = hub.register(variant_artifact(threshold=50.0), name="pump-ae")
    _call(hub, "POST", f"/models/{name}/{version}/publish")
    agent = _start(broker, tmp_path, "dev-lite", hub)
    try:
        _call(hub, "PUT", "/devices/dev-lite/desired",
              {"model": {"name": name, "version": version}})
        wait_until(lambda: _call(hub, "GET", "/devices/dev-lite")["in_sync"], 60,
                   "the published int8 variant active")
        assert agent.detector.active is not None
        assert agent.detector.active.manifest.quantization.value == "int8"
        _call(hub, "PUT", "/devices/dev-lite/desired",
              {"model": {"name": name, "version": version, "variant": "float32"}})
        wait_until(lambda: (_call(hub, "GET", "/devices/dev-lite")["active_model"] or {})
                   .get("variant") == "float32", 60, "the float32 variant active")
        shown = _call(hub, "GET", "/devices/dev-lite")
        assert shown["in_sync"] and shown["desired_model"]["variant"] == "float32"
        active = agent.detector.active
        assert active is not None and active.manifest.quantization.value == "float32"
        manifest, data = agent.core.store.read_verified(name, version)  # signature again
        assert manifest.sha256 == active.manifest.sha256 and len(data) == manifest.size
        readings = agent.status()["readings"]
        wait_until(lambda: agent.status()["readings"] > readings, 30, "the agent goes on")
    finally:
        agent.stop()
