"""The device core driven by hand: no thread, no broker, no wall clock.

A fake clock, a wire that records what the core hands it, a real SQLite outbox and model store
(with the signature checked in-process), real TFLite fixture models (the ``Device`` of
conftest.py). Each test is what a device does, step by step: readings become windows, anomalies
and batches; a dead link keeps them. A desired model arriving, being verified, shadowed and
swapped in, or failing at run time and being rolled back, is test_core_models.py's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.sources.base import Reading
from shared.messages import (
    AnomalyEvent,
    DeviceStatus,
    Heartbeat,
    HubStatus,
    TelemetryBatch,
    decode,
    encode,
)
from shared.packed import decode_telemetry, is_msgpack
from shared.signing import SigningKey
from tests.edge_agent.conftest import DEVICE, INT8, Device
from tests.edge_agent.support import TOPICS, make_manifest, signal_value


def test_core_subscribes_and_announces_itself_on_start(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    assert {TOPICS.desired(DEVICE), TOPICS.ack(DEVICE)} <= dev.wire.subscriptions
    online = dev.wire.births[TOPICS.status(DEVICE)]
    assert callable(online) and b'"online"' in online()
    assert dev.core.status().active_model is None


def test_reading_to_anomaly_to_message_without_a_thread(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    dev.desire(make_manifest(key, INT8, threshold=0.2), INT8)
    assert dev.wire.reported().state.value == "active"
    dev.link_up()
    dev.feed(30)
    assert dev.core.status().anomalies_raised == 0, "normal readings raise nothing"
    dev.feed(10, spike=25.0)
    status = dev.core.status()
    assert status.readings == 40 and status.anomalies_raised >= 1
    while dev.core.send_now():  # a window of four at a time
        dev.puback_all()
    anomalies = [decode(AnomalyEvent, p) for _t, p, _m in dev.wire.take("anomalies")]
    assert anomalies and anomalies[0].model.version == 1 and anomalies[0].score > 0.2
    batches = [decode(TelemetryBatch, p) for _t, p, _m in dev.wire.published
               if _t.endswith("/telemetry")]
    assert sum(len(b.ts) for b in batches) == 40, "every reading went out in a batch"


def test_link_down_keeps_messages_and_link_up_sends_them_again(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)
    dev.link_up()
    dev.feed(20)  # two full batches
    assert dev.core.send_now() == 2
    sent = dev.wire.take("telemetry")
    dev.link_down()  # before any PUBACK
    dev.feed(20)
    assert dev.core.send_now() == 0 and not dev.wire.take("telemetry"), "nothing goes out"
    assert dev.core.status().outbox_depth == 4, "all four batches kept"
    dev.link_up()
    dev.core.send_now()
    again = [decode(TelemetryBatch, p).seq for _t, p, _m in dev.wire.published]
    assert again == [0, 1, 2, 3], "the unacknowledged ones first, in order, then the new"
    assert [decode(TelemetryBatch, p).seq for _t, p, _m in sent] == [0, 1]
    dev.puback_all()
    assert dev.core.status().outbox_depth == 4, "a PUBACK alone does not delete"
    dev.hub_acks(telemetry=3)
    status = dev.core.status()
    assert status.outbox_depth == 0 and status.readings_stored == 40
    assert status.batches_sent == 4


def test_window_holds_at_most_max_inflight(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    dev.link_up()
    dev.feed(60)  # six batches, window of four
    assert dev.core.send_now() == 4
    assert dev.core.send_now() == 0, "the window is full until PUBACKs come"
    dev.puback_all()
    dev.wire.published.clear()
    assert dev.core.send_now() == 2



def test_heartbeat_is_due_on_the_clock_and_says_what_the_status_says(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)
    dev.link_up()
    dev.core.tick()
    assert not dev.wire.take("heartbeat"), "not due yet"
    dev.clock.advance(5.0)
    dev.core.tick()
    beats = [decode(Heartbeat, p) for _t, p, _m in dev.wire.take("heartbeat")]
    assert len(beats) == 1 and beats[0].outbox_depth == dev.core.status().outbox_depth
    assert beats[0].at == pytest.approx(dev.clock.time())


def test_bad_messages_are_counted_not_raised(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    dev.deliver(TOPICS.desired(DEVICE), b"{not json")
    dev.deliver(TOPICS.ack(DEVICE), b'{"v": 1}')
    dev.deliver("elsewhere/entirely", b"x")
    dev.core.on_readings([Reading(float("nan"), (1.0, 2.0)), Reading(1.0, (1.0,))])
    status = dev.core.status()
    assert status.bad_messages == 3 and status.bad_readings == 2 and status.readings == 0


def test_stale_time_does_not_flush_a_batch_until_its_age(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key)
    dev.core.on_readings([Reading(time.time(), (0.0, 0.0))])
    dev.core.tick()
    assert dev.core.status().outbox_depth == 0
    dev.clock.advance(1.0)
    dev.core.tick()
    assert dev.core.status().outbox_depth == 1, "the batch is written at batch_max_age_s"



def test_msgpack_telemetry_carries_the_same_readings_and_its_floor_when_sent_again(
    tmp_path: Path, key: SigningKey
) -> None:
    """``[telemetry] encoding = "msgpack"``: the batches go out as MessagePack
    (shared/packed.py) with every reading as JSON would carry it, and a batch sent again after
    the link came back has its floor set in that encoding."""
    dev = Device(tmp_path, key, telemetry={"batch_max_readings": 10, "encoding": "msgpack"})
    dev.link_up()
    dev.feed(20)
    assert dev.core.send_now() == 2
    first = [p for _t, p, _m in dev.wire.take("telemetry")]
    assert all(is_msgpack(p) for p in first)
    dev.link_down()
    dev.link_up()
    dev.core.send_now()
    again = [decode_telemetry(p) for _t, p, _m in dev.wire.take("telemetry")]
    assert [b.seq for b in again] == [0, 1] and [b.floor for b in again] == [0, 0]
    rows = [r for b in map(decode_telemetry, first) for r in b.to_batch().values]
    assert rows == [list(signal_value(i)) for i in range(20)]


def test_auto_sends_msgpack_while_every_hub_online_reads_it_and_json_otherwise(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)  # [telemetry] encoding left at its default, auto
    assert dev.core.config.telemetry.encoding == "auto"
    dev.link_up()

    def sent_in(readings: int) -> list[bool]:
        dev.feed(readings)
        while dev.core.send_now():
            dev.puback_all()
        return [is_msgpack(p) for _t, p, _m in dev.wire.take("telemetry")]

    def hub(hub_id: str, properties: list[tuple[str, str]]) -> None:
        record = encode(HubStatus(device_id=hub_id, state=DeviceStatus.ONLINE,
                                  session="aaaa0001", at=1.0))
        dev.core.on_message(TOPICS.hub_status(hub_id), record, retain=True,
                            properties=properties)

    assert sent_in(10) == [False], "no hub heard yet: JSON"
    hub("hub-1", [("encodings", "json msgpack")])
    assert sent_in(10) == [True]
    hub("hub-2", [])  # a hub of an earlier build comes online
    assert sent_in(10) == [False]
