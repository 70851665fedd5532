"""Every bad model is refused with its reason in `reported`, and the old model keeps running."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from shared.codec import split
from shared.manifest import Manifest
from shared.signing import SigningKey, generate_signing_key
from simulator.broker import Broker
from tests.edge_agent.support import (
    Collector,
    HubStandIn,
    ScriptedSource,
    agent_config,
    fixture_bytes,
    make_manifest,
    wait_until,
)

pytestmark = pytest.mark.integration
DATA = fixture_bytes("ae_int8_w8c2.tflite")


def _corrupt_chunk(key: SigningKey, hub: HubStandIn, version: int) -> None:
    manifest = make_manifest(key, DATA, version=version, threshold=0.2)
    chunks = split(DATA, manifest.chunk_size)
    chunks[1] = bytes(len(chunks[1]))
    hub.publish_model(manifest, DATA, chunks=chunks)


def _wrong_sha256(key: SigningKey, hub: HubStandIn, version: int) -> None:
    manifest = make_manifest(key, DATA, version=version, threshold=0.2, sha256="0" * 64)
    hub.publish_model(manifest, DATA)


def _bad_signature(key: SigningKey, hub: HubStandIn, version: int) -> None:
    manifest = make_manifest(key, DATA, version=version, threshold=0.2)
    tampered = json.loads(manifest.to_bytes())
    tampered["threshold"] = 1e9  # a changed field after signing
    hub.publish_model(manifest, DATA, manifest_payload=json.dumps(tampered).encode())


def _unknown_key(key: SigningKey, hub: HubStandIn, version: int) -> None:
    manifest = make_manifest(generate_signing_key(), DATA, version=version, threshold=0.2)
    hub.publish_model(manifest, DATA)


def _truncated(key: SigningKey, hub: HubStandIn, version: int) -> None:
    short = DATA[: len(DATA) - 300]
    manifest = make_manifest(key, short, version=version, threshold=0.2, size=len(DATA))
    signed: Manifest = key.sign(manifest.replace(**{"sha256": make_manifest(
        key, DATA).sha256}))
    hub.publish_model(signed, short)


def _wrong_shape(key: SigningKey, hub: HubStandIn, version: int) -> None:
    manifest = make_manifest(key, DATA, version=version, threshold=0.2, window=16)
    hub.publish_model(manifest, DATA)


CASES: list[tuple[str, Callable[[SigningKey, HubStandIn, int], None], str]] = [
    ("corrupt chunk", _corrupt_chunk, "chunk 1: sha256"),
    ("wrong sha256", _wrong_sha256, "model file sha256"),
    ("bad signature", _bad_signature, "signature does not verify"),
    ("unknown key id", _unknown_key, "unknown key id"),
    ("truncated file", _truncated, f"model file is {len(DATA) - 300} bytes, the manifest says"),
    ("wrong input shape", _wrong_shape, "does not fit a window of 16 readings × 2 channels"),
]


def test_each_bad_model_is_refused_with_its_reason_and_the_old_model_stays(
    broker: Broker, hub: HubStandIn, collector: Collector, signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    good = make_manifest(signing_key, DATA, version=1, threshold=0.2)
    hub.publish_model(good, DATA)
    config = agent_config(broker, tmp_path / "state", "dev-r", signing_key,
                          model={"chunk_retries": 1, "shadow_windows": 0})
    agent = Agent(config, source=ScriptedSource(10**9, rate_hz=50.0))
    agent.start()
    try:
        hub.set_desired("dev-r", "pump-ae", 1)
        wait_until(lambda: (agent.status()["active_model"] or {}).get("version") == 1, 20,
                   "model v1 active")
        for version, (case, publish, reason) in enumerate(CASES, start=2):
            publish(signing_key, hub, version)
            hub.set_desired("dev-r", "pump-ae", version)

            def refused(version: int = version) -> dict[str, object] | None:
                last = collector.last_reported("dev-r")
                if last and last["state"] == "failed" and last["model"]["version"] == version:
                    return last
                return None

            reported = wait_until(refused, 20, f"{case}: reported failed")
            assert reason in reported["error"], f"{case}: {reported['error']}"
            assert reported["active"]["version"] == 1, f"{case}: old model no longer reported"
            assert agent.status()["active_model"]["version"] == 1, case
            assert agent.status()["model_state"] == "failed"
        assert agent.status()["readings"] > 0
        windows_before = agent.detector.windows_scored
        wait_until(lambda: agent.detector.windows_scored > windows_before + 5, 10,
                   "the old model still scores windows")
    finally:
        agent.stop(timeout=5)
