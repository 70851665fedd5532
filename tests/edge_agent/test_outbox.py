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


def _acked(outbox: Outbox, n: int) -> list[int]:
    """Add ``n`` telemetry messages, hand them out and acknowledge them; their seqs."""
    seqs = [_add(outbox) for _ in range(n)]
    outbox.ack(e.id for e in outbox.take(n))
    return seqs


def test_acknowledged_messages_are_kept_outside_the_bound_then_pruned_by_age(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", resend_window_s=60, clock=lambda: now[0])
    _acked(outbox, 3)
    assert (outbox.depth(), outbox.pending_bytes(), outbox.kept()) == (0, 0, 3)
    assert outbox.take(10) == [], "kept messages are not handed out by themselves"
    now[0] += 30
    _acked(outbox, 2)
    now[0] += 40  # the first three are now 70 s old, the two others 40 s
    _add(outbox)  # expiry runs as messages are added
    assert outbox.kept() == 2
    assert outbox.drops().messages == 0, "forgetting kept messages is not a drop"


def test_kept_messages_are_bounded_by_a_quarter_of_the_outbox(tmp_path: Path) -> None:
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", max_bytes=4096, resend_window_s=300,
                    clock=lambda: now[0])
    _acked(outbox, 20)  # 2,000 bytes kept
    now[0] += 2
    _add(outbox)
    assert outbox.kept() == 10, "the newest 1,024 bytes' worth of messages stay"
    outbox.resend_acked_since(0.0)
    assert [e.seq for e in outbox.take(100)] == list(range(10, 21))


def test_resend_brings_back_exactly_the_messages_acked_since_in_order(tmp_path: Path) -> None:
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", resend_window_s=300, clock=lambda: now[0])
    _acked(outbox, 3)  # seq 0-2 acknowledged at 1000
    now[0] = 1010.0
    _acked(outbox, 2)  # seq 3-4 acknowledged at 1010
    _add(outbox)
    _add(outbox)  # seq 5-6 waiting
    assert outbox.resend_acked_since(1005.0) == 2
    assert (outbox.depth(), outbox.pending_bytes(), outbox.kept()) == (4, 400, 3)
    again = outbox.take(10)
    assert [e.seq for e in again] == [3, 4, 5, 6], "the resent first, in their original order"
    assert again[0].payload == _payload(3)
    outbox.ack(e.id for e in again)
    assert (outbox.depth(), outbox.pending_bytes(), outbox.kept()) == (0, 0, 7)
    assert outbox.resend_acked_since(1005.0) == 4, "each message is kept once, not twice"


def test_resend_never_hands_out_a_message_twice_while_it_is_in_flight(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", resend_window_s=300)
    _acked(outbox, 2)
    for _ in range(3):
        _add(outbox)
    in_flight = outbox.take(2)  # seq 2-3; seq 4 not yet handed out
    assert outbox.resend_acked_since(0.0) == 4, "two kept, two in flight"
    assert [e.seq for e in outbox.take(10)] == [0, 1, 4]
    # The two in flight may have reached nobody either: at their PUBACK they go out again.
    outbox.ack([in_flight[0].id])
    assert outbox.depth() == 5, "nothing has left: seq 2 stays for its second sending"
    second = outbox.take(10)
    assert [e.seq for e in second] == [2]
    outbox.ack([second[0].id])
    assert (outbox.depth(), outbox.kept()) == (4, 1), "acknowledged again, it is kept as usual"


def test_resend_window_zero_keeps_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", resend_window_s=0)
    _acked(outbox, 3)
    assert outbox.kept() == 0
    assert outbox.resend_acked_since(0.0) == 0
    assert outbox.take(10) == []
    outbox.close()
    assert Outbox.inspect(tmp_path / "o.db").kept == 0


def test_kept_messages_and_notes_survive_reopening(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", resend_window_s=300)
    _acked(outbox, 3)
    outbox.set_meta("hub_session:hub-1", "0123abcd")
    outbox.close()
    assert Outbox.inspect(tmp_path / "o.db").kept == 3

    reopened = Outbox(tmp_path / "o.db", resend_window_s=300)
    assert (reopened.kept(), reopened.depth()) == (3, 0)
    assert reopened.meta("hub_session:hub-1") == "0123abcd"
    assert reopened.meta("hub_session:hub-2") is None
    assert reopened.resend_acked_since(0.0) == 3
    assert [e.seq for e in reopened.take(10)] == [0, 1, 2]
    assert _add(reopened) == 3, "resending does not disturb the seq counter"


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
