"""Hostile payloads on every stream the hub ingests, mixed with good ones: each is dead-lettered
with its reason and counted, and the good messages around them are stored in a few commits.

Real mosquitto, real hub, real SQLite. The messages are queued by the broker while the hub is
away, so the hub receives them in one burst, as it would after an outage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, func, select

from cloud_hub.db.tables import DeadLetter, TelemetryBatchRow
from cloud_hub.mqtt.decoding import INGESTED
from cloud_hub.service import Hub
from shared.messages import MAX_PAYLOAD_BYTES
from shared.topics import DeviceTopic, Topics
from simulator.broker import Broker
from tests.cloud_hub.conftest import hub_settings
from tests.cloud_hub.helpers import (
    enroll_devices,
    publish_wait,
    publisher_client,
    stand_in_training,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.hub]
EPOCH = "0123456789abcdef"
HUGE = 2**70

# A valid payload of each stream, and the field where a float and an int can be put wrong.
VALID: dict[DeviceTopic, tuple[dict[str, Any], str, str]] = {
    DeviceTopic.TELEMETRY: ({"v": 2, "device_id": "pump-1", "epoch": EPOCH, "seq": 0,
                             "channels": ["a", "b"], "ts": [1.0], "values": [[1.0, 2.0]]},
                            "ts", "seq"),
    DeviceTopic.ANOMALIES: ({"v": 2, "device_id": "pump-1", "epoch": EPOCH, "seq": 0,
                             "ts": [1.0, 2.0], "score": 2.0, "threshold": 1.0,
                             "model": {"name": "m", "version": 1}, "channels": [],
                             "detected_at": 2.0}, "score", "seq"),
    DeviceTopic.STATUS: ({"v": 2, "device_id": "pump-1", "state": "online", "at": 1.0},
                         "at", "v"),
    DeviceTopic.HEARTBEAT: ({"v": 2, "device_id": "pump-1", "at": 1.0, "uptime_s": 1.0,
                             "rss_bytes": 100, "outbox_depth": 0, "oldest_unsent_age_s": 0.0,
                             "drops": 0}, "uptime_s", "rss_bytes"),
    DeviceTopic.REPORTED: ({"v": 2, "device_id": "pump-1", "state": "active", "since": 1.0,
                            "model": {"name": "m", "version": 1}}, "since", "model"),
}


def _with(body: dict[str, Any], name: str, raw: str) -> bytes:
    """``body`` with field ``name`` written as the raw JSON text ``raw``."""
    marker = "__raw__"
    text = json.dumps({**body, name: marker})
    return text.replace(json.dumps(marker), raw).encode()


def hostile(stream: DeviceTopic) -> list[tuple[str, bytes, str]]:
    """(what, payload, a fragment of the reason it must be refused with) for ``stream``."""
    body, float_field, int_field = VALID[stream]
    float_value = "[NaN]" if float_field == "ts" else "NaN"
    inf_value = "[1e999]" if float_field == "ts" else "1e999"
    huge = (json.dumps({"name": "m", "version": 0}).replace("0", str(HUGE))
            if int_field == "model" else str(HUGE))
    other = DeviceTopic.ANOMALIES if stream is DeviceTopic.TELEMETRY else DeviceTopic.TELEMETRY
    return [
        ("oversized", b'{"v": 2, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}',
         "exceeds the limit"),
        ("malformed", json.dumps(body).encode()[:25], "Invalid JSON"),
        ("nan", _with(body, float_field, float_value), "non-finite"),
        ("inf", _with(body, float_field, inf_value), float_field),
        ("huge integer", _with(body, int_field, huge),
         "schema version" if int_field == "v" else int_field),
        ("unknown version", json.dumps({**body, "v": 99}).encode(), "schema version v=99"),
        ("another stream's message", json.dumps(VALID[other][0]).encode(),
         f"{INGESTED[stream].__name__}: "),
        ("another device's message", json.dumps({**body, "device_id": "pump-2"}).encode(),
         "does not match the topic"),
    ]


def _good(seq: int) -> bytes:
    body = dict(VALID[DeviceTopic.TELEMETRY][0], seq=seq, ts=[float(seq)])
    return json.dumps(body).encode()


def test_hostile_payloads_on_every_stream_are_dead_lettered_and_good_ones_stored(
    broker: Broker, tmp_path: Path
) -> None:
    settings = hub_settings(broker, tmp_path / "hub")
    topics: Topics = settings.topics
    first = Hub(settings, run_training=stand_in_training())
    enroll_devices(first)
    first.start()
    first.stop()  # the broker now queues the device streams for the hub's session

    expected: list[tuple[str, str]] = []
    client = publisher_client(broker)
    seq = 0
    try:
        for stream in VALID:
            for what, payload, reason in hostile(stream):
                publish_wait(client, topics.telemetry("pump-1"), _good(seq))
                seq += 1
                topic = topics.device("pump-1", stream)
                publish_wait(client, topic, payload)
                expected.append((f"{stream.value} {what}", reason))
        publish_wait(client, topics.telemetry("pump-1"), _good(seq))
        seq += 1
    finally:
        client.disconnect()
        client.loop_stop()

    hub = Hub(settings, run_training=stand_in_training())
    hub.start()
    try:
        wait_for(lambda: hub.ingest.snapshot()["messages_received"] >= seq + len(expected),
                 timeout=30, what="every message handled")
        stats = hub.ingest.snapshot()
        with Session(hub.engine) as session:
            stored = session.exec(select(func.count()).select_from(TelemetryBatchRow)).one()
            letters = session.exec(select(DeadLetter).order_by(DeadLetter.id)).all()
    finally:
        hub.stop()
    assert stored == seq, "every good batch around the hostile ones is stored"
    assert stats["dead_letters"] == len(expected) == len(letters)
    for letter, (what, reason) in zip(letters, expected, strict=True):
        assert reason in letter.reason, (what, letter.reason)
    assert stats["commits"] <= 10, \
        f"{stats['commits']} commits for {stats['messages_received']} messages"
