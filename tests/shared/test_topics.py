"""Topic layout: built in one place, parsed back, bad ids refused."""

from __future__ import annotations

import pytest

from shared.topics import DeviceTopic, TopicError, TopicKind, Topics


def test_device_topics_follow_the_brief() -> None:
    t = Topics()
    assert t.telemetry("pump-01") == "edgeloop/v1/devices/pump-01/telemetry"
    assert t.desired("pump-01") == "edgeloop/v1/devices/pump-01/desired"
    assert t.manifest("pump-ae", 3) == "edgeloop/v1/models/pump-ae/3/manifest"
    assert t.chunk("pump-ae", 3, 0) == "edgeloop/v1/models/pump-ae/3/chunks/0"
    assert t.hub_shared(DeviceTopic.TELEMETRY) == "$share/hub/edgeloop/v1/devices/+/telemetry"


def test_parse_inverts_build() -> None:
    t = Topics("site-a/edgeloop")
    parsed = t.parse(t.anomalies("m.7"))
    assert (parsed.kind, parsed.device_id) == ("anomalies", "m.7")
    chunk = t.parse(t.chunk("pump-ae", 2, 5))
    assert (chunk.kind, chunk.model_name, chunk.model_version, chunk.chunk_index) == (
        "chunk", "pump-ae", 2, 5,
    )


def test_every_parsed_topic_has_one_kind_and_only_device_streams_a_stream() -> None:
    t = Topics()
    parsed = {
        t.parse(t.device("pump-1", DeviceTopic.DRIFT)): (TopicKind.DRIFT, DeviceTopic.DRIFT),
        t.parse(t.ack("pump-1")): (TopicKind.ACK, DeviceTopic.ACK),
        t.parse(t.manifest("pump-ae", 3)): (TopicKind.MANIFEST, None),
        t.parse(t.chunk("pump-ae", 3, 1)): (TopicKind.CHUNK, None),
        t.parse(t.trust(4)): (TopicKind.TRUST, None),
        t.parse(t.hub_status("hub-1")): (TopicKind.HUB_STATUS, None),
    }
    for p, (kind, stream) in parsed.items():
        assert type(p.kind) is TopicKind and p.kind is kind and p.stream is stream
    assert {k.value for k in DeviceTopic} <= {k.value for k in TopicKind}


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "#", "x" * 65, "sp ace"])
def test_invalid_device_ids_are_refused(device_id: str) -> None:
    with pytest.raises(TopicError, match="device id"):
        Topics().telemetry(device_id)


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/devices/d/telemetry",
        "edgeloop/v1/devices/d/firmware",
        "edgeloop/v1/devices/d",
        "edgeloop/v1/models/m/0/manifest",
        "edgeloop/v1/models/m/1/chunks/x",
    ],
)
def test_parse_refuses_topics_outside_the_layout(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics().parse(topic)
