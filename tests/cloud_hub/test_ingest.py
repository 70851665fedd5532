"""MQTT ingest with a real mosquitto and a real SQLite file."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import msgspec
import pytest
from sqlmodel import Session, func, select

from cloud_hub.db.queries import read_telemetry
from cloud_hub.db.tables import Anomaly, DeadLetter, Device, TelemetryBatchRow
from cloud_hub.service import Hub
from shared.messages import (
    MAX_PAYLOAD_BYTES,
    Ack,
    AnomalyEvent,
    DeviceStatus,
    ModelRef,
    ModelState,
    Reported,
    ReportedModel,
    Status,
    StreamAck,
    TelemetryBatch,
    decode,
    encode,
)
from shared.packed import encode_telemetry
from simulator.broker import Broker
from tests.cloud_hub.conftest import hub_settings
from tests.cloud_hub.helpers import (
    Subscriber,
    enroll_devices,
    publish_wait,
    publisher_client,
    stand_in_training,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.hub]
EPOCH = "0123456789abcdef"


def _batch(device: str, seq: int, rows: int = 5) -> TelemetryBatch:
    t0 = 1_700_000_000.0 + seq * rows
    return TelemetryBatch(
        device_id=device, epoch=EPOCH, seq=seq, channels=["a", "b"],
        ts=[t0 + i for i in range(rows)], values=[[float(seq), float(i)] for i in range(rows)],
    )


def _anomaly(device: str, seq: int) -> AnomalyEvent:
    return AnomalyEvent(device_id=device, epoch=EPOCH, seq=seq, ts=(1.0, 2.0), score=3.0,
                        threshold=1.0, model=ModelRef(name="m", version=1), channels=["a"],
                        detected_at=2.5)


def test_every_reading_is_stored_once_under_redelivery(broker: Broker, hub: Hub) -> None:
    topics = hub.topics
    client = publisher_client(broker)
    try:
        for seq in (0, 1, 1, 2, 0):  # seq 0 and 1 delivered twice
            publish_wait(client, topics.telemetry("pump-1"), encode(_batch("pump-1", seq)))
        publish_wait(client, topics.telemetry("pump-2"), encode(_batch("pump-2", 1)))
        for _ in range(2):
            publish_wait(client, topics.anomalies("pump-1"), encode(_anomaly("pump-1", 7)))
    finally:
        client.disconnect()
        client.loop_stop()

    wait_for(lambda: hub.ingest.snapshot()["messages_received"] >= 8, what="8 messages")
    stats = hub.ingest.snapshot()
    assert stats["telemetry_batches"] == 4
    assert stats["telemetry_readings"] == 20
    assert stats["duplicates"] == 3
    assert stats["anomalies"] == 1
    with Session(hub.engine) as session:
        assert session.exec(select(func.count()).select_from(TelemetryBatchRow)).one() == 4
        assert session.exec(select(func.count()).select_from(Anomaly)).one() == 1
        piece = read_telemetry(session, device_id="pump-1")
        assert piece.channels == ["a", "b"]
        assert piece.ts.tolist() == [1_700_000_000.0 + i for i in range(15)]
        assert piece.values[:, 0].tolist() == [0.0] * 5 + [1.0] * 5 + [2.0] * 5
        device = session.get(Device, "pump-1")
        assert device is not None and device.telemetry_readings == 15
        anomaly = session.exec(select(Anomaly)).one()
        assert anomaly.stored_at >= anomaly.detected_at


def test_malformed_payloads_become_dead_letters_and_ingest_goes_on(
    broker: Broker, hub: Hub
) -> None:
    topics = hub.topics
    good = encode(_batch("pump-1", 0))
    wrong_v = json.loads(good)
    wrong_v["v"] = 99
    wrong_types = json.loads(good)
    wrong_types["seq"] = "zero"
    mismatched = encode(_batch("pump-2", 0))
    bad = [
        (topics.telemetry("pump-1"), good[: len(good) // 2], "TelemetryBatch"),
        (topics.telemetry("pump-1"), json.dumps(wrong_v).encode(), "schema version"),
        (topics.telemetry("pump-1"), json.dumps(wrong_types).encode(), "seq"),
        (topics.telemetry("pump-1"), b"x" * (MAX_PAYLOAD_BYTES + 1), "exceeds the limit"),
        (f"{topics.prefix}/devices/bad$id/telemetry", good, "device id"),
        (topics.telemetry("pump-1"), mismatched, "does not match the topic"),
    ]
    client = publisher_client(broker)
    try:
        for topic, payload, _ in bad:
            publish_wait(client, topic, payload)
        publish_wait(client, topics.telemetry("pump-1"), good)
    finally:
        client.disconnect()
        client.loop_stop()

    wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] == 1, what="the good batch")
    wait_for(lambda: hub.ingest.snapshot()["dead_letters"] == len(bad), what="dead letters")
    with Session(hub.engine) as session:
        letters = session.exec(select(DeadLetter).order_by(DeadLetter.id)).all()
    assert len(letters) == len(bad)
    for letter, (topic, payload, reason) in zip(letters, bad, strict=True):
        assert letter.topic == topic
        assert reason in letter.reason, (reason, letter.reason)
        assert letter.payload_size == len(payload)


def test_status_heartbeat_and_reported_update_the_device(broker: Broker, hub: Hub) -> None:
    topics = hub.topics
    client = publisher_client(broker)
    reported = Reported(device_id="pump-1", model=ReportedModel(name="m", version=2),
                        state=ModelState.ACTIVE, since=10.0)
    try:
        publish_wait(client, topics.status("pump-1"),
                     encode(Status(device_id="pump-1", state=DeviceStatus.ONLINE, at=5.0,
                                   agent_version="0.1.0")), retain=True)
        publish_wait(client, topics.reported("pump-1"), encode(reported), retain=True)
    finally:
        client.disconnect()
        client.loop_stop()

    def device() -> Device | None:
        with Session(hub.engine) as session:
            d = session.get(Device, "pump-1")
            return d if d is not None and d.active_version == 2 and d.online else None

    found = wait_for(device, what="device row with status and reported")
    assert found.reported_state == "active"
    assert found.active_name == "m"
    assert found.agent_version == "0.1.0"


def test_the_runtime_a_status_names_is_kept_and_shown_with_the_variant_it_prefers(
    broker: Broker, hub: Hub
) -> None:
    from cloud_hub.api.convert import device_public
    from shared.messages import AgentRuntime

    topics = hub.topics
    legacy = AgentRuntime(package="tflite_runtime", version="2.14.0", xnnpack_int8=False)
    client = publisher_client(broker)
    try:
        publish_wait(client, topics.status("pump-1"),
                     encode(Status(device_id="pump-1", state=DeviceStatus.ONLINE, at=5.0,
                                   runtime=legacy)), retain=True)
    finally:
        client.disconnect()
        client.loop_stop()

    def stored() -> Device | None:
        with Session(hub.engine) as session:
            d = session.get(Device, "pump-1")
            return d if d is not None and d.runtime is not None else None

    found = wait_for(stored, what="the device's runtime")
    assert found.runtime == {"package": "tflite_runtime", "version": "2.14.0",
                             "xnnpack_int8": False}
    view = device_public(found)
    assert view.runtime == found.runtime
    assert view.runtime_prefers is not None and view.runtime_prefers.quantization == "float32"
    assert "does not run int8" in view.runtime_prefers.reason

    # a status without it (an older agent, a will made before the first model load) keeps it
    client = publisher_client(broker)
    try:
        publish_wait(client, topics.status("pump-1"),
                     encode(Status(device_id="pump-1", state=DeviceStatus.OFFLINE, at=6.0)),
                     retain=True)
    finally:
        client.disconnect()
        client.loop_stop()

    def offline() -> Device | None:
        with Session(hub.engine) as session:
            d = session.get(Device, "pump-1")
            return d if d is not None and d.status_at == 6.0 else None

    assert wait_for(offline, what="the offline record").runtime == found.runtime


def test_a_last_will_older_than_the_online_record_marks_the_device_offline(
    broker: Broker, hub: Hub
) -> None:
    topics = hub.topics
    client = publisher_client(broker)
    try:
        for state, at in ((DeviceStatus.ONLINE, 10.0), (DeviceStatus.OFFLINE, 9.0)):
            publish_wait(client, topics.status("pump-1"),
                         encode(Status(device_id="pump-1", state=state, at=at)), retain=True)
    finally:
        client.disconnect()
        client.loop_stop()

    def offline() -> bool:
        with Session(hub.engine) as session:
            d = session.get(Device, "pump-1")
            return d is not None and d.status_at == 9.0

    wait_for(offline, what="the offline record")
    with Session(hub.engine) as session:
        device = session.get(Device, "pump-1")
        assert device is not None and device.online is False


def test_telemetry_sent_while_the_hub_is_down_is_stored_after_it_restarts(
    broker: Broker, tmp_path: Path
) -> None:
    settings = hub_settings(broker, tmp_path / "hub")
    first = Hub(settings)
    enroll_devices(first)
    first.start()
    first.stop()  # persistent session: the broker queues for the hub's subscriptions
    client = publisher_client(broker)
    try:
        for seq in range(3):
            publish_wait(client, settings.topics.telemetry("pump-1"),
                         encode(_batch("pump-1", seq)))
    finally:
        client.disconnect()
        client.loop_stop()
    second = Hub(settings)
    enroll_devices(second)
    second.start()
    try:
        wait_for(lambda: second.ingest.snapshot()["telemetry_batches"] == 3,
                 what="the batches queued while the hub was down")
        with Session(second.engine) as session:
            assert read_telemetry(session, device_id="pump-1").ts.size == 15
    finally:
        second.stop()


def test_hubs_in_a_share_group_split_telemetry_and_store_each_reading_once(
    broker: Broker, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'shared-hub.db'}"
    hubs = [
        Hub(hub_settings(broker, tmp_path / f"hub-{i}", database_url=db_url,
                         mqtt_share_group="hub", hub_id=f"hub-{i}-{broker.port}"),
            run_training=stand_in_training())
        for i in range(2)
    ]
    enroll_devices(hubs[0])  # one database for both
    for h in hubs:
        h.start()
    try:
        client = publisher_client(broker)
        try:
            for seq in range(40):
                topic = hubs[0].topics.telemetry("pump-9")
                publish_wait(client, topic, encode(_batch("pump-9", seq)))
        finally:
            client.disconnect()
            client.loop_stop()
        wait_for(lambda: sum(h.ingest.snapshot()["telemetry_batches"] for h in hubs) >= 40,
                 what="40 batches across both hubs")
        per_hub = [h.ingest.snapshot()["telemetry_batches"] for h in hubs]
        assert sum(per_hub) == 40, per_hub  # each message went to exactly one hub
        assert all(n > 0 for n in per_hub), f"the share group did not split the load: {per_hub}"
        with Session(hubs[0].engine) as session:
            stored = session.exec(select(func.count()).select_from(TelemetryBatchRow)).one()
        assert stored == 40
    finally:
        for h in hubs:
            h.stop()


def test_the_hub_acknowledges_what_it_committed_on_the_devices_ack_topic(
    broker: Broker, hub: Hub
) -> None:
    topics = hub.topics
    sub = Subscriber(broker, topics.ack("pump-1"), client_id="test-ack-sub")
    client = publisher_client(broker)

    def next_ack() -> Ack:
        return decode(Ack, bytes(sub.messages.get(timeout=10).payload))

    try:
        for seq in (1, 2):  # seq 0 went missing on the way
            publish_wait(client, topics.telemetry("pump-1"), encode(_batch("pump-1", seq)))
        ack = next_ack()
        while ack.telemetry.top < 2:
            ack = next_ack()
        assert (ack.epoch, ack.telemetry.watermark, ack.telemetry.top) == (EPOCH, -1, 2)
        publish_wait(client, topics.telemetry("pump-1"), encode(_batch("pump-1", 0)))
        while ack.telemetry.watermark < 2:
            ack = next_ack()
        assert ack.telemetry == StreamAck(watermark=2, top=2)
        assert ack.anomalies == StreamAck()
    finally:
        client.disconnect()
        client.loop_stop()
        sub.close()
    late = Subscriber(broker, topics.ack("pump-1"), client_id="test-ack-late")
    try:
        retained = decode(Ack, bytes(late.messages.get(timeout=10).payload))
        assert retained.telemetry.watermark == 2, "the latest acknowledgement is retained"
    finally:
        late.close()
    counted = hub.acks.snapshot()  # what GET /metrics reports as acks_published, ack_bytes
    assert counted["acks_published"] >= 2
    assert counted["ack_bytes"] >= counted["acks_published"] * len(encode(retained)) // 2


def test_msgpack_and_json_telemetry_are_stored_alike_and_bad_msgpack_is_dead_lettered(
    broker: Broker, hub: Hub
) -> None:
    """One device's stream in both encodings (shared/packed.py): the rows read back the same,
    a seq sent again in the other encoding is a duplicate (not a conflict), and each spoiled
    MessagePack payload becomes a dead letter naming what is wrong."""
    topics = hub.topics
    good = msgspec.msgpack.decode(encode_telemetry(_batch("pump-1", 1), "msgpack"))
    nan = struct.pack("<d", math.nan) + good["values"][8:]
    bad = [
        (encode_telemetry(_batch("pump-1", 5), "msgpack")[:60], "invalid MessagePack"),
        (msgspec.msgpack.encode({**good, "v": 99}), "schema version"),
        (msgspec.msgpack.encode({**good, "seq": "one"}), "seq"),
        (msgspec.msgpack.encode({**good, "values": nan}), "must be finite"),
        (msgspec.msgpack.encode({**good, "values": good["values"][:-8]}), "values has"),
        (encode_telemetry(_batch("pump-2", 1), "msgpack"), "does not match the topic"),
    ]
    client = publisher_client(broker)
    try:
        publish_wait(client, topics.telemetry("pump-1"), encode_telemetry(_batch("pump-1", 0)))
        for seq in (1, 2):
            publish_wait(client, topics.telemetry("pump-1"),
                         encode_telemetry(_batch("pump-1", seq), "msgpack"))
        publish_wait(client, topics.telemetry("pump-1"), encode_telemetry(_batch("pump-1", 1)))
        for payload, _ in bad:
            publish_wait(client, topics.telemetry("pump-1"), payload)
    finally:
        client.disconnect()
        client.loop_stop()

    wait_for(lambda: hub.ingest.snapshot()["messages_received"] >= 4 + len(bad),
             what="every message")
    stats = hub.ingest.snapshot()
    assert (stats["telemetry_batches"], stats["duplicates"]) == (3, 1)
    assert stats["dead_letters"] == len(bad) and stats["device_conflicts"] == 0
    with Session(hub.engine) as session:
        piece = read_telemetry(session, device_id="pump-1")
        assert piece.channels == ["a", "b"]
        assert piece.ts.tolist() == [1_700_000_000.0 + i for i in range(15)]
        assert piece.values.tolist() == [v for s in range(3) for v in _batch("pump-1", s).values]
        letters = session.exec(select(DeadLetter).order_by(DeadLetter.id)).all()
    assert [r for _, r in bad if not any(r in x.reason for x in letters)] == []
