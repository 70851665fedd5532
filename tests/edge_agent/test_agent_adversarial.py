"""Hostile payloads on every stream the agent reads (issue 10): desired, its acknowledgements,
hub status, trust lists, model manifests and chunks. Oversized, malformed, NaN/infinite,
huge-integer, unknown-version and wrong-topic payloads are each refused and counted; the agent
keeps running, keeps its model and its trusted keys, keeps streaming, and an acknowledgement
never deletes what the hub did not store.

A real mosquitto and a real agent; the payloads are published as anyone on the broker could.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from shared.codec import split
from shared.messages import (
    MAX_PAYLOAD_BYTES,
    Ack,
    Desired,
    DeviceStatus,
    HubStatus,
    ModelRef,
    StreamAck,
    encode,
)
from shared.signing import SigningKey
from simulator.broker import Broker
from tests.edge_agent.support import (
    TOPICS,
    Collector,
    HubStandIn,
    ScriptedSource,
    agent_config,
    fixture_bytes,
    make_manifest,
    wait_until,
)

pytestmark = pytest.mark.integration
DEVICE = "dev-h"
DATA = fixture_bytes("ae_int8_w8c2.tflite")
HUGE = 10**30
OVERSIZED = b'{"v":2,"pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}'


def _json(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _desired_cases() -> list[tuple[str, bytes]]:
    good = {"v": 2, "device_id": DEVICE, "model": {"name": "pump-ae", "version": 1},
            "issued_at": 1.0}
    return [
        ("oversized", OVERSIZED),
        ("malformed", b"{not json"),
        ("NaN", json.dumps({**good, "issued_at": float("nan")}).encode()),
        ("infinite", json.dumps({**good, "issued_at": float("inf")}).encode()),
        ("huge integer", _json(**{**good, "model": {"name": "pump-ae", "version": HUGE}})),
        ("unknown version", _json(**{**good, "v": 99})),
        ("another device's", encode(Desired(device_id="dev-other", model=ModelRef(
            name="pump-ae", version=1), issued_at=1.0))),
        ("another message type", encode(Ack(device_id=DEVICE, epoch="0" * 16, at=1.0))),
    ]


def _ack_cases(epoch: str) -> list[tuple[str, bytes]]:
    good = {"v": 2, "device_id": DEVICE, "epoch": epoch, "at": 1.0}
    return [
        ("oversized", OVERSIZED),
        ("malformed", b"\xff\xfe not even text"),
        ("NaN", json.dumps({**good, "at": float("nan")}).encode()),
        ("huge integer", _json(**{**good, "telemetry": {"watermark": HUGE, "top": HUGE}})),
        ("unknown version", _json(**{**good, "v": 3})),
        ("another device's", encode(Ack(device_id="dev-other", epoch=epoch, at=1.0))),
        # well formed, our epoch, but claiming what was never sent: would empty the outbox
        ("forged watermark", encode(Ack(device_id=DEVICE, epoch=epoch, at=1.0,
                                        telemetry=StreamAck(watermark=10**6, top=10**6)))),
    ]


def _hub_status_cases() -> list[tuple[str, bytes]]:
    good = {"v": 2, "device_id": "hub-1", "state": "online", "session": "abcd0123", "at": 1.0}
    return [
        ("oversized", OVERSIZED),
        ("malformed", b"[1, 2"),
        ("NaN", json.dumps({**good, "at": float("nan")}).encode()),
        ("huge integer", _json(**{**good, "at": 10**400})),
        ("unknown version", _json(**{**good, "v": 7})),
        ("another hub's record", _json(**{**good, "device_id": "hub-2"})),
    ]


def _trust_cases() -> list[tuple[int, str, bytes]]:
    """(topic version, case, payload): none of them may ever change the keys trusted."""
    good = {"v": 1, "version": 5, "created_at": 1.0,
            "keys": {"0123456789abcdef": {"public_key": "AAAA"}}}
    return [
        (5, "oversized", b'{"pad":"' + b"x" * (64 * 1024) + b'"}'),
        (5, "malformed", b"{not json"),
        (5, "NaN", json.dumps({**good, "created_at": float("nan")}).encode()),
        (5, "huge integer", _json(**{**good, "version": HUGE})),
        (5, "unknown version", _json(**{**good, "v": 99})),
        (6, "another version's list", _json(**good)),
    ]


def _publish(hub: HubStandIn, topic: str, payload: bytes, retain: bool = False) -> None:
    hub.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def _refused(collector: Collector, version: int) -> dict[str, Any] | None:
    last = collector.last_reported(DEVICE)
    if last and last["state"] == "failed" and (last["model"] or {}).get("version") == version:
        return last
    return None


def test_hostile_payloads_on_every_stream_are_refused_counted_and_change_nothing(
    broker: Broker, hub: HubStandIn, collector: Collector, signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    good = make_manifest(signing_key, DATA, version=1, threshold=0.2)
    hub.publish_model(good, DATA)
    _publish(hub, TOPICS.hub_status("hub-1"), encode(HubStatus(
        device_id="hub-1", state=DeviceStatus.ONLINE, session="abcd0123", at=1.0)), retain=True)
    config = agent_config(broker, tmp_path / "state", DEVICE, signing_key,
                          model={"chunk_retries": 0, "shadow_windows": 0})
    agent = Agent(config, source=ScriptedSource(10**9, rate_hz=50.0))
    agent.start()
    try:
        hub.set_desired(DEVICE, "pump-ae", 1)
        wait_until(lambda: (agent.status()["active_model"] or {}).get("version") == 1, 20,
                   "model v1 active")
        wait_until(lambda: agent.status()["hub"]["hubs_online"] == ["hub-1"], 10, "hub heard")
        wait_until(lambda: agent.status()["readings_stored"] > 0, 10, "telemetry acknowledged")
        expected = 0

        # -- desired, acknowledgements, hub status: refused and counted as bad messages --------
        streams = [
            (TOPICS.desired(DEVICE), _desired_cases()),
            (TOPICS.ack(DEVICE), _ack_cases(agent.outbox.epoch)),
            (TOPICS.hub_status("hub-1"), _hub_status_cases()),
            ("edgeloop/v1/hub/not a hub id/status",
             [("a topic that is not a hub's", b"{}")]),
        ]
        for topic, cases in streams:
            for case, payload in cases:
                _publish(hub, topic, payload)
                expected += 1
                wait_until(lambda n=expected: agent.status()["bad_messages"] >= n, 10,
                           f"{topic}: {case} refused and counted")
                assert agent.status()["bad_messages"] == expected, f"{topic}: {case}"
        # -- trust lists: refused and counted by the key ring, the pinned key still trusted ----
        keys = agent.status()["trusted_keys"]
        for n, (version, case, payload) in enumerate(_trust_cases(), start=1):
            _publish(hub, TOPICS.trust(version), payload)
            wait_until(lambda n=n: agent.status()["trust_refused"] >= n, 10,
                       f"trust list {case} refused and counted")
            assert agent.status()["trust_refused"] == n, f"trust list {case}"
        _publish(hub, "edgeloop/v1/trust/latest", b"{}")
        expected += 1
        wait_until(lambda: agent.status()["bad_messages"] >= expected, 10,
                   "a trust topic without a version refused and counted")
        status = agent.status()
        assert (status["trusted_keys"], status["trust_version"]) == (keys, 0)
        assert status["active_model"]["version"] == 1 and status["model_state"] == "active"
        assert status["hub"]["hubs_online"] == ["hub-1"], "the good hub record still stands"
        stored = status["readings_stored"]
        wait_until(lambda: agent.status()["readings_stored"] > stored + 100, 10,
                   "still streaming, still acknowledged")
        assert agent.status()["drops"] == 0

        # -- manifests: each version gets a hostile manifest; the download fails, v1 stays -----
        tampered = json.loads(make_manifest(signing_key, DATA, version=2,
                                            threshold=0.2).to_bytes())
        manifests: list[tuple[str, bytes, str]] = [
            ("oversized", b'{"pad":"' + b"x" * (300 * 1024) + b'"}', "exceeds"),
            ("malformed", b"{not json", "not valid JSON"),
            ("NaN", json.dumps({**tampered, "threshold": float("nan")}).encode(), "manifest"),
            ("huge integer", _json(**{**tampered, "size": HUGE}), "manifest"),
            ("unknown version", _json(**{**tampered, "v": 99}), "manifest"),
            ("another version's", good.to_bytes(), "describes pump-ae v1"),
        ]
        for version, (case, payload, reason) in enumerate(manifests, start=2):
            _publish(hub, TOPICS.manifest("pump-ae", version), payload, retain=True)
            hub.set_desired(DEVICE, "pump-ae", version)
            expected += 1
            reported = wait_until(lambda v=version: _refused(collector, v), 20,
                                  f"manifest {case}: reported failed")
            assert reason in reported["error"], f"manifest {case}: {reported['error']}"
            assert reported["active"]["version"] == 1, f"manifest {case}"
            assert agent.status()["bad_messages"] == expected, f"manifest {case}"

        # -- chunks: an oversized chunk, and a chunk published under another chunk's topic -----
        first = len(manifests) + 2
        for version, case in enumerate(("oversized", "another chunk's"), start=first):
            manifest = make_manifest(signing_key, DATA, version=version, threshold=0.2)
            chunks = split(DATA, manifest.chunk_size)
            if case == "oversized":
                chunks[0] = b"\0" * (MAX_PAYLOAD_BYTES + 1)
            else:
                chunks[1] = chunks[0]
            hub.publish_model(manifest, DATA, chunks=chunks)
            hub.set_desired(DEVICE, "pump-ae", version)
            expected += 1
            reported = wait_until(lambda v=version: _refused(collector, v), 20,
                                  f"chunk {case}: reported failed")
            assert "sha256" in reported["error"], f"chunk {case}: {reported['error']}"
            assert agent.status()["bad_messages"] == expected, f"chunk {case}"

        status = agent.status()
        assert status["active_model"]["version"] == 1, "the good model kept running"
        assert agent.healthy()
        windows = agent.detector.windows_scored
        stored = status["readings_stored"]
        wait_until(lambda: agent.detector.windows_scored > windows + 10
                   and agent.status()["readings_stored"] > stored + 100, 10,
                   "still scoring and streaming after it all")
    finally:
        agent.stop(timeout=5)
    assert agent.status()["outbox_depth"] == 0, "everything it read was acknowledged at stop"
    log = collector.device(DEVICE)
    assert sorted(log.telemetry) == list(range(len(log.telemetry))), "no telemetry lost"
