"""The lean client's keep-alive (cloud_hub.mqtt.lean.LeanClient.loop_misc): a PINGRESP that is
late while the broker keeps sending does not close the connection (it is counted, and the hub's
metrics show the count as ``mqtt_late_pingresps_total``); a broker gone quiet still closes it,
a keep-alive after the PINGREQ.

Under the bench's overload mosquitto answered the hub's PINGREQ 10-25 s late while its
messages kept coming, and paho closed the working connection (the broker then sent 12,000
unacknowledged messages again). Whether paho closes it depends on the instant its loop runs:
between the keep-alive's end counted from the last write and counted from the PINGREQ (a few
microseconds), its two checks disagree. A real broker cannot be made to answer late on cue,
so the broker here is a socket the test feeds, and paho's clock is the test's: the loop is
run at that instant, as a busy hub's loop is, and at every quarter second around it.
"""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as paho_client
import pytest
from paho.mqtt.enums import MQTTErrorCode, _ConnectionState

from cloud_hub.mqtt.client import new_client
from cloud_hub.mqtt.lean import LeanClient, Received

KEEPALIVE = 10
START = 1024.0
TICK = 2.0 ** -16  # what a real clock moves between two readings; exact in binary
STEP = 0.25
PINGREQ = b"\xc0\x00"


class _Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class _Broker:
    """The client's socket: what the test puts in ``inbound`` is read; what is sent is kept."""

    def __init__(self) -> None:
        self.inbound = bytearray()
        self.sent = bytearray()
        self.closed = False

    def recv(self, bufsize: int) -> bytes:
        if not self.inbound:
            raise BlockingIOError
        chunk = bytes(self.inbound[:bufsize])
        del self.inbound[:bufsize]
        return chunk

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def pingreqs(self) -> int:
        return bytes(self.sent).count(PINGREQ)


def _publish(n: int) -> bytes:
    """A QoS 0 PUBLISH with no properties (MQTT 5)."""
    topic = b"edgeloop/v1/devices/d-1/telemetry"
    body = struct.pack("!H", len(topic)) + topic + b"\x00" + f'{{"n":{n}}}'.encode()
    return bytes([0x30, len(body)]) + body


class _Link:
    """A connected client, its broker socket and paho's clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = _Clock()
        monkeypatch.setattr(paho_client, "time_func", self.clock)
        self.broker = _Broker()
        self.received: list[Received] = []
        self.disconnects: list[Any] = []
        client: LeanClient = new_client("test-keepalive", manual_ack=True)
        client.on_received = self.received.append
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.append(rc)
        client._keepalive = KEEPALIVE
        client._sock = self.broker  # type: ignore[assignment]
        client._state = _ConnectionState.MQTT_CS_CONNECTED
        client._last_msg_out = client._last_bytes_received = START
        self.client = client
        self.sent_messages = 0

    def turn(self, at: float, *, broker_sends: bool) -> None:
        """One turn of the client's loop at ``at``: read what came, then paho's checks."""
        self.clock.now = at
        if broker_sends:
            self.broker.inbound += _publish(self.sent_messages)
            self.sent_messages += 1
        rc = self.client._packet_read()
        assert rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN)
        self.client.loop_misc()

    def run(self, seconds: float, *, broker_sends: bool) -> None:
        """Turns every STEP, and at the instant paho's checks disagree after each PINGREQ;
        stops early if the connection closes. The test's clock stands still within a turn,
        so a PINGREQ's stamp is moved a TICK past the write's, as a real clock moves it."""
        end = self.clock.now + seconds
        client = self.client
        while self.clock.now < end and not self.disconnects:
            at = self.clock.now + STEP
            if client._ping_t > 0:
                edge = client._last_msg_out + KEEPALIVE
                if self.clock.now < edge < at:
                    at = edge
            pings = self.broker.pingreqs()
            self.turn(at, broker_sends=broker_sends)
            if self.broker.pingreqs() > pings and client._ping_t == client._last_msg_out:
                client._ping_t += TICK


def test_a_late_pingresp_does_not_close_a_connection_the_broker_keeps_sending_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    link = _Link(monkeypatch)
    link.run(12 * KEEPALIVE, broker_sends=True)  # the broker never answers a PINGREQ
    assert link.disconnects == []
    assert not link.broker.closed
    # a PINGREQ every keep-alive or two (paho skips one when the turn falls in its gap),
    # none answered
    assert link.broker.pingreqs() >= 6
    assert link.client.late_pingresps >= 5
    assert len(link.received) == link.sent_messages  # every message read on the way


def test_the_instant_paho_closed_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """paho 2.x stamps the last write a tick before the PINGREQ. Run at the keep-alive's end
    counted from that write, ``_check_keepalive`` neither closes nor pings, and the next turn
    of ``loop_misc`` closed the connection, with the broker's messages still coming."""
    link = _Link(monkeypatch)
    client = link.client
    client._last_msg_out = START
    client._ping_t = START + TICK  # a PINGREQ sent at START, as paho stamps it
    link.turn(START + KEEPALIVE - STEP, broker_sends=True)
    link.turn(START + KEEPALIVE, broker_sends=True)  # from the write: a keep-alive; the ping: not
    link.turn(START + KEEPALIVE + STEP, broker_sends=True)
    assert link.disconnects == []
    assert client.late_pingresps == 1
    assert client._ping_t == 0.0  # no longer waited for; the next PINGREQ comes round
    link.run(2 * KEEPALIVE, broker_sends=True)
    assert link.disconnects == []
    assert link.broker.pingreqs() >= 1


def test_a_quiet_broker_still_closes_the_connection_a_keepalive_after_the_pingreq(
        monkeypatch: pytest.MonkeyPatch) -> None:
    link = _Link(monkeypatch)
    link.run(3 * KEEPALIVE, broker_sends=True)
    assert link.disconnects == []
    went_quiet = link.clock.now
    link.run(4 * KEEPALIVE, broker_sends=False)
    assert link.disconnects  # (paho reports it twice: both its checks close)
    assert all(rc == "Keep alive timeout" for rc in link.disconnects)
    assert link.broker.closed
    # the last bytes came at went_quiet: a PINGREQ at most a keep-alive later, unanswered
    # for a keep-alive
    assert link.clock.now - went_quiet <= 2 * KEEPALIVE + STEP


def test_a_pingresp_in_time_is_taken_as_paho_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    link = _Link(monkeypatch)
    link.run(KEEPALIVE + STEP, broker_sends=False)
    assert link.broker.pingreqs() == 1
    assert link.client._ping_t > 0
    link.broker.inbound += b"\xd0\x00"  # PINGRESP
    link.turn(link.clock.now + STEP, broker_sends=False)
    assert link.client._ping_t == 0
    assert link.client.late_pingresps == 0
    assert link.disconnects == []
