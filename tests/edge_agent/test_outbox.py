"""The durable outbox: seq assignment, keeping messages until PUBACK, drops that are counted."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from edge_agent.comms.mqtt import LinkEvent, LinkSettings, MqttLink
from edge_agent.telemetry.outbox import Outbox, OutboxError, Stream
from edge_agent.telemetry.sender import Sender
from simulator.broker import Broker
from tests.edge_agent.support import Collector, wait_until


def _payload(seq: int, size: int = 100) -> bytes:
    return f'{{"seq": {seq}}}'.encode().ljust(size)


def _add(outbox: Outbox, stream: Stream = Stream.TELEMETRY, size: int = 100,
         readings: int = 10) -> int:
    entry = outbox.add(device_id="dev", stream=stream, topic=f"t/{stream.value}",
                       build=lambda seq: _payload(seq, size), readings=readings)
    return entry.seq


def test_outbox_keeps_unacknowledged_messages_across_reopening(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    seqs = [_add(outbox) for _ in range(3)]
    taken = outbox.take(10)
    outbox.ack([taken[0].id])
    outbox.close()

    reopened = Outbox(tmp_path / "o.db")
    pending = reopened.take(10)
    assert seqs == [0, 1, 2]
    assert [e.seq for e in pending] == [1, 2]
    assert pending[0].payload == _payload(1)
    assert _add(reopened) == 3, "seq must continue after reopening, never restart"
    assert reopened.depth() == 3


def test_seq_is_per_device_and_stream(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    assert [_add(outbox), _add(outbox), _add(outbox, Stream.ANOMALIES)] == [0, 1, 0]
    other = outbox.add(device_id="other", stream=Stream.TELEMETRY, topic="t",
                       build=lambda seq: _payload(seq))
    assert other.seq == 0


def test_requeue_hands_out_unacknowledged_messages_again_in_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    for _ in range(5):
        _add(outbox)
    first = outbox.take(3)
    assert outbox.take(10)[0].seq == 3, "take continues after what is in flight"
    outbox.ack([first[1].id])
    outbox.requeue_inflight()
    assert [e.seq for e in outbox.take(10)] == [0, 2, 3, 4]


def test_full_outbox_drops_oldest_telemetry_first_and_counts_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", max_bytes=1000)
    _add(outbox, Stream.ANOMALIES)
    for _ in range(12):
        _add(outbox, size=100, readings=10)
    drops = outbox.drops()
    remaining = outbox.take(100)
    assert outbox.pending_bytes() <= 1000
    assert drops.telemetry_messages == 12 - sum(e.stream is Stream.TELEMETRY for e in remaining)
    assert drops.telemetry_readings == 10 * drops.telemetry_messages
    assert drops.anomalies == 0
    assert remaining[0].stream is Stream.ANOMALIES, "the anomaly outlives older-than-it telemetry"
    telemetry = [e.seq for e in remaining if e.stream is Stream.TELEMETRY]
    assert telemetry == list(range(12 - len(telemetry), 12)), "the newest telemetry is kept"
    outbox.close()
    assert Outbox.inspect(tmp_path / "o.db").drops == drops, "drop counts are persistent"


def test_anomalies_are_dropped_only_when_no_telemetry_is_left(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", max_bytes=1000)
    _add(outbox, Stream.TELEMETRY)
    for _ in range(11):
        _add(outbox, Stream.ANOMALIES)
    drops = outbox.drops()
    assert drops.telemetry_messages == 1
    assert drops.anomalies == 1


def test_message_larger_than_the_outbox_is_refused_with_the_reason(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", max_bytes=4096)
    with pytest.raises(OutboxError, match="exceeds outbox.max_bytes 4096"):
        _add(outbox, size=5000)
    assert _add(outbox) == 0, "a refused message does not use up a seq"


def test_old_telemetry_expires_and_is_counted(tmp_path: Path) -> None:
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", max_age_s=60, anomaly_max_age_s=600,
                    clock=lambda: now[0])
    _add(outbox)
    _add(outbox, Stream.ANOMALIES)
    now[0] += 120
    _add(outbox)
    assert outbox.drops().telemetry_messages == 1
    assert [e.stream for e in outbox.take(10)] == [Stream.ANOMALIES, Stream.TELEMETRY]


@pytest.mark.integration
def test_outbox_keeps_batch_until_puback(broker: Broker, tmp_path: Path) -> None:
    """A message handed to a link whose broker is gone stays; it goes out after a reconnect."""
    collector = Collector(broker)
    outbox = Outbox(tmp_path / "o.db")
    control: queue.Queue[LinkEvent] = queue.Queue()
    link = MqttLink(LinkSettings(client_id="dev", host=broker.host, port=broker.port,
                                 reconnect_initial_s=0.1, reconnect_max_s=0.3), control=control)
    sender = Sender(outbox, link, control, max_inflight=5)
    try:
        link.start()
        sender.start()
        assert link.wait_connected(10)
        outbox.add(device_id="dev", stream=Stream.TELEMETRY,
                   topic="edgeloop/v1/devices/dev/telemetry",
                   build=lambda seq: _batch(seq, 1.0), readings=1)
        sender.wake()
        assert sender.flush(10), "first batch acknowledged"
        broker.stop()
        wait_until(lambda: not link.connected, 10, "link noticed the broker is gone")
        outbox.add(device_id="dev", stream=Stream.TELEMETRY,
                   topic="edgeloop/v1/devices/dev/telemetry",
                   build=lambda seq: _batch(seq, 2.0), readings=1)
        sender.wake()
        assert not sender.flush(0.5)
        assert outbox.depth() == 1, "no PUBACK, so the batch is still in the outbox"
        broker.start()
        assert sender.flush(15), "sent and acknowledged after the reconnect"
        wait_until(lambda: len(collector.device("dev").telemetry) == 2, 10,
                   f"both batches {collector.device('dev').telemetry}")
        assert collector.device("dev").all_ts() == [1.0, 2.0]
    finally:
        sender.stop()
        link.stop()
        collector.close()


def _batch(seq: int, ts: float) -> bytes:
    return (f'{{"v":1,"device_id":"dev","seq":{seq},"channels":["a"],"ts":[{ts}],'
            f'"values":[[0.5]]}}').encode()
