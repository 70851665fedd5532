"""The durable outbox: seq assignment, keeping messages until PUBACK, drops that are counted."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.comms.mqtt import LinkEvent, LinkSettings, MqttLink
from edge_agent.telemetry.outbox import AckResult, Outbox, OutboxEntry, OutboxError, Stream
from edge_agent.telemetry.sender import Sender
from shared.messages import Ack, MessageError, StreamAck
from simulator.broker import Broker
from tests.edge_agent.support import Collector, wait_until


def _payload(seq: int, size: int = 100) -> bytes:
    return f'{{"seq": {seq}}}'.encode().ljust(size)  # JSON with padding, as the link sees it


def _batch_payload(seq: int, size: int) -> bytes:
    return _batch(seq, float(seq))


def _add(outbox: Outbox, stream: Stream = Stream.TELEMETRY, size: int = 100,
         readings: int = 10, payload: Callable[[int, int], bytes] | None = None) -> int:
    make = payload or _payload
    entry = outbox.add(device_id="dev", stream=stream, topic=f"t/{stream.value}",
                       build=lambda seq: make(seq, size), readings=readings)
    return entry.seq


def _deliver(outbox: Outbox, n: int, first_mid: int = 1) -> list[OutboxEntry]:
    """Hand ``n`` messages to a pretend link and PUBACK them; the entries as sent."""
    entries = outbox.take(n)
    for mid, entry in enumerate(entries, start=first_mid):
        outbox.sent(mid, entry)
        assert outbox.puback(mid) == entry
    return entries


def _ack(outbox: Outbox, telemetry: int = -1, top: int | None = None,
         anomalies: int = -1, epoch: str | None = None, live: bool = True) -> AckResult:
    mark = StreamAck(watermark=telemetry, top=max(telemetry, top if top is not None else -1))
    ack = Ack(device_id="dev", epoch=epoch or outbox.epoch, at=0.0, telemetry=mark,
              anomalies=StreamAck(watermark=anomalies, top=anomalies))
    return outbox.apply_ack(ack, live=live)


def test_outbox_keeps_messages_until_the_hub_acknowledges_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    seqs = [_add(outbox) for _ in range(3)]
    _deliver(outbox, 3)
    assert (outbox.depth(), outbox.delivered(), outbox.take(10)) == (3, 3, []), \
        "PUBACKed by the broker: kept, not sent again by itself"
    result = _ack(outbox, telemetry=0)
    assert (result.stored[Stream.TELEMETRY], result.stored_readings) == (1, 10)
    epoch = outbox.epoch
    outbox.close()

    reopened = Outbox(tmp_path / "o.db")
    assert reopened.epoch == epoch, "the epoch lives with the outbox"
    assert seqs == [0, 1, 2]
    assert (reopened.depth(), reopened.delivered()) == (2, 2)
    assert _add(reopened) == 3, "seq must continue after reopening, never restart"
    assert [e.seq for e in reopened.take(10)] == [3]
    _ack(reopened, telemetry=3)
    assert reopened.depth() == 0


def test_a_wiped_outbox_starts_a_new_epoch_and_ignores_the_old_ones_acks(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "a.db")
    second = Outbox(tmp_path / "b.db")
    assert first.epoch != second.epoch and len(first.epoch) == 16
    _add(second)
    _deliver(second, 1)
    assert _ack(second, telemetry=5, epoch=first.epoch).stored[Stream.TELEMETRY] == 0
    assert second.depth() == 1


def test_an_ack_claiming_more_than_the_device_ever_sent_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    for _ in range(3):
        _add(outbox)
    _deliver(outbox, 3)
    with pytest.raises(MessageError, match="top 99 is above the highest seq this device has "
                                           "sent"):
        _ack(outbox, telemetry=99)
    with pytest.raises(MessageError, match="anomalies top 0"):
        _ack(outbox, telemetry=2, anomalies=0)
    assert (outbox.depth(), outbox.delivered()) == (3, 3), "nothing deleted by a forged ack"


def test_a_message_goes_out_with_the_lowest_seq_of_its_stream_still_held(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    for _ in range(4):
        _add(outbox, payload=_batch_payload)
    _add(outbox, Stream.ANOMALIES, payload=_batch_payload)
    _deliver(outbox, 2)
    _ack(outbox, telemetry=0)
    sent = outbox.take(10)
    floors = {(e.stream, e.seq): json.loads(e.payload)["floor"] for e in sent}
    assert floors == {(Stream.TELEMETRY, 2): 1, (Stream.TELEMETRY, 3): 1,
                      (Stream.ANOMALIES, 0): 0}


def test_a_live_ack_sends_again_what_it_shows_missing_once_it_is_old_enough(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", ack_timeout_s=10, clock=lambda: now[0])
    for _ in range(5):
        _add(outbox)
    _deliver(outbox, 5)  # seq 0-4 delivered at 1000; the hub stored 0, 1 and 4
    assert _ack(outbox, telemetry=1, top=4).resend == 0, "too recent: may still be on its way"
    now[0] += 11
    assert _ack(outbox, telemetry=1, top=4, live=False).resend == 0, \
        "a retained ack replayed at subscribe says nothing about now"
    assert _ack(outbox, telemetry=1, top=4).resend == 2
    assert [e.seq for e in outbox.take(10)] == [2, 3], "the missing, in order; 4 is stored"
    assert outbox.resent == 2


def test_a_probe_sends_the_newest_unacknowledged_message_backing_off_while_no_hub_answers(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", ack_timeout_s=10, probe_max_s=40, clock=lambda: now[0])
    for _ in range(3):
        _add(outbox)
    _deliver(outbox, 3)
    assert outbox.probe() == 0
    probes = []
    for _ in range(12):  # 120 s with no hub answering
        now[0] += 10
        if outbox.probe():
            [entry] = _deliver(outbox, 10, first_mid=100 + len(probes))
            probes.append((now[0] - 1000.0, entry.seq))
    assert probes == [(10.0, 2), (30.0, 2), (70.0, 2), (110.0, 2)], \
        "intervals 10, 20, 40, then capped at 40 s"
    _ack(outbox, telemetry=0, top=2)  # a hub answers: the rest follows the ack rules
    now[0] += 10
    assert outbox.probe() == 1, "the watermark moved: back to probing after ack_timeout_s"


def test_seq_is_per_device_and_stream(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    assert [_add(outbox), _add(outbox), _add(outbox, Stream.ANOMALIES)] == [0, 1, 0]
    other = outbox.add(device_id="other", stream=Stream.TELEMETRY, topic="t",
                       build=lambda seq: _payload(seq))
    assert other.seq == 0


def test_requeue_hands_out_what_the_broker_did_not_take_again_in_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db")
    for _ in range(5):
        _add(outbox)
    first = outbox.take(3)
    for mid, entry in enumerate(first, start=1):
        outbox.sent(mid, entry)
    assert outbox.take(10)[0].seq == 3, "take continues after what is in flight"
    assert outbox.inflight() == 3
    outbox.puback(2)
    outbox.requeue_inflight()
    assert outbox.inflight() == 0
    assert [e.seq for e in outbox.take(10)] == [0, 2, 3, 4], "seq 1 is with the broker"


def test_a_window_refilled_one_by_one_still_reaches_every_queued_message(
    tmp_path: Path,
) -> None:
    # The take after the first PUBACK sees fewer rows than it asked for (those in flight sit
    # before its cursor): that must not make the outbox believe nothing else is queued.
    outbox = Outbox(tmp_path / "o.db")
    for _ in range(8):
        _add(outbox)
    inflight: list[int] = []
    taken: list[int] = []
    for entry in outbox.take(3):
        outbox.sent(len(taken) + 1, entry)
        inflight.append(len(taken) + 1)
        taken.append(entry.seq)
    while len(taken) < 8:
        outbox.puback(inflight.pop(0))
        [entry] = outbox.take(1)
        outbox.sent(len(taken) + 1, entry)
        inflight.append(len(taken) + 1)
        taken.append(entry.seq)
    assert taken == list(range(8))


def test_drops_take_what_the_hub_has_not_acknowledged_but_never_what_is_in_flight(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.db", max_bytes=1000)
    for _ in range(5):
        _add(outbox)
    _deliver(outbox, 3)  # seq 0-2 with the broker, not acknowledged by a hub
    [sending] = outbox.take(1)  # seq 3 waits for its PUBACK
    outbox.sent(9, sending)
    for _ in range(7):
        _add(outbox)
    assert outbox.drops().telemetry_messages == 2, "the two oldest, delivered or not"
    assert outbox.puback(9) == sending, "the message in flight was kept"


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
    collector = Collector(broker, acks=False)
    outbox = Outbox(tmp_path / "o.db")
    control: queue.Queue[LinkEvent] = queue.Queue()
    mqtt = broker.agent_mqtt(broker.add_device("dev"))
    mqtt.pop("topic_prefix")
    link = MqttLink(LinkSettings(client_id="dev", **mqtt,
                                 reconnect_initial_s=0.1, reconnect_max_s=0.3), control=control)
    sender = Sender.for_outbox(outbox, link, control, max_inflight=5)
    try:
        link.start()
        sender.start()
        assert link.wait_connected(10)
        outbox.add(device_id="dev", stream=Stream.TELEMETRY,
                   topic="edgeloop/v1/devices/dev/telemetry",
                   build=lambda seq: _batch(seq, 1.0), readings=1)
        sender.wake()
        wait_until(lambda: outbox.delivered() == 1, 10, "first batch PUBACKed")
        assert outbox.depth() == 1, "kept until a hub acknowledges it (none runs here)"
        broker.stop()
        wait_until(lambda: not link.connected, 10, "link noticed the broker is gone")
        outbox.add(device_id="dev", stream=Stream.TELEMETRY,
                   topic="edgeloop/v1/devices/dev/telemetry",
                   build=lambda seq: _batch(seq, 2.0), readings=1)
        sender.wake()
        assert not link.connected and outbox.delivered() == 1, "no PUBACK for the second batch"
        broker.start()
        wait_until(lambda: outbox.delivered() == 2, 15, "sent and PUBACKed after the reconnect")
        wait_until(lambda: len(collector.device("dev").telemetry) == 2, 10,
                   f"both batches {collector.device('dev').telemetry}")
        assert collector.device("dev").all_ts() == [1.0, 2.0]
    finally:
        sender.stop()
        link.stop()
        collector.close()


def _batch(seq: int, ts: float) -> bytes:
    return (f'{{"v":2,"device_id":"dev","epoch":"0123456789abcdef","seq":{seq},'
            f'"channels":["a"],"ts":[{ts}],"values":[[0.5]]}}').encode()


def test_drift_summaries_are_a_third_stream_acknowledged_by_its_own_watermark(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.db")
    assert [_add(outbox, Stream.DRIFT) for _ in range(3)] == [0, 1, 2]
    _add(outbox, Stream.TELEMETRY)
    _deliver(outbox, 4)
    assert _ack(outbox, telemetry=0).stored[Stream.DRIFT] == 0, \
        "an acknowledgement without a drift mark (a hub of an earlier build) deletes none"
    ack = Ack(device_id="dev", epoch=outbox.epoch, at=0.0,
              drift=StreamAck(watermark=1, top=1))
    result = outbox.apply_ack(ack, live=True)
    assert result.stored[Stream.DRIFT] == 2 and outbox.depth() == 1
    with pytest.raises(MessageError, match="drift top 7"):
        outbox.apply_ack(ack.replace(drift=StreamAck(watermark=7, top=7)), live=True)


def test_drift_summaries_are_dropped_after_telemetry_and_before_anomalies(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.db", max_bytes=1000)
    _add(outbox, Stream.ANOMALIES)
    _add(outbox, Stream.DRIFT)
    _add(outbox, Stream.TELEMETRY)
    for _ in range(9):
        _add(outbox, Stream.ANOMALIES)
    drops = outbox.drops()
    assert (drops.telemetry_messages, drops.drift, drops.anomalies) == (1, 1, 0)
    assert drops.messages == 2


def test_a_message_the_hub_keeps_refusing_is_dropped_counted_and_the_watermark_moves_on(
    tmp_path: Path,
) -> None:
    """A hub that dead-letters seq 0 and stores 1-3 keeps its watermark below 0: without a bound
    the device would hold 1-3 and send 0-2 again after every acknowledgement, forever."""
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", ack_timeout_s=10.0, clock=lambda: now[0])
    for _ in range(4):
        _add(outbox, payload=_batch_payload)
    _deliver(outbox, 4)
    mid = 100
    for _round in range(outbox._delivery.refused_after - 1):
        now[0] += 11.0
        assert _ack(outbox, telemetry=-1, top=3).resend == 3, "0-2 shown missing, sent again"
        mid += 10
        assert [e.seq for e in _deliver(outbox, 10, first_mid=mid)] == [0, 1, 2]
        assert outbox.drops().telemetry_messages == 0, "not refused yet"
    now[0] += 11.0
    _ack(outbox, telemetry=-1, top=3)
    drops = outbox.drops()
    assert (drops.telemetry_messages, drops.telemetry_readings) == (1, 10), "seq 0, counted"
    again = outbox.take(10)
    assert [e.seq for e in again] == [1, 2], "what the hub stored goes out once more ..."
    assert all(json.loads(e.payload)["floor"] == 1 for e in again), "... with the floor past 0"
    # The hub lets its watermark pass below the floor: 1-3 are covered and leave the outbox.
    assert _ack(outbox, telemetry=3).stored[Stream.TELEMETRY] == 3
    assert outbox.depth() == 0


def test_a_hub_that_is_only_behind_never_makes_the_outbox_drop(tmp_path: Path) -> None:
    """Seq 0 stored late (the watermark moves): the count starts again, nothing is dropped."""
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", ack_timeout_s=10.0, clock=lambda: now[0])
    for _ in range(8):
        _add(outbox, payload=_batch_payload)
    _deliver(outbox, 8)
    mid = 100
    for watermark in range(-1, 5):  # each round the hub has stored one more in order
        now[0] += 11.0
        _ack(outbox, telemetry=watermark, top=7)
        mid += 10
        _deliver(outbox, 10, first_mid=mid)
    assert outbox.drops().telemetry_messages == 0


def test_outbox_page_cache_is_bounded_while_it_grows(tmp_path: Path) -> None:
    # SQLite's default page cache (2 MB) stays filled as an outbox grows without a hub: memory
    # the agent keeps. The outbox's connection caps it, and still reads back every row.
    from edge_agent.telemetry import store

    outbox = Outbox(tmp_path / "outbox.db")
    try:
        for _ in range(600):
            _add(outbox, size=4096)
        assert outbox._db.execute("PRAGMA cache_size").fetchone()[0] == -store.CACHE_KIB
        assert store.CACHE_KIB * 1024 < 4096 * 600 // 4  # far below what was written
        assert [e.seq for e in outbox.take(1000)] == list(range(600))
    finally:
        outbox.close()
