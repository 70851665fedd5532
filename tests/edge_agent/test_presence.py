"""Hub presence on the device: which new hub session makes it send acknowledged messages again."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.telemetry.outbox import Outbox, Stream
from edge_agent.telemetry.presence import HubPresence
from shared.messages import DeviceStatus, HubStatus, MessageError, encode


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _outbox(path: Path, clock: _Clock) -> Outbox:
    return Outbox(path, resend_window_s=300, clock=clock)


def _send(outbox: Outbox, n: int) -> None:
    """``n`` messages added and acknowledged by the broker now."""
    for _ in range(n):
        outbox.add(device_id="dev", stream=Stream.TELEMETRY, topic="t",
                   build=lambda seq: b'{"seq": %d}' % seq, readings=1)
    outbox.ack(e.id for e in outbox.take(n))


def _status(state: DeviceStatus, session: str, hub: str = "hub-1") -> HubStatus:
    return HubStatus(device_id=hub, state=state, session=session, at=1000.0)


def test_first_session_seen_after_a_start_resends_nothing(tmp_path: Path) -> None:
    clock = _Clock()
    outbox = _outbox(tmp_path / "o.db", clock)
    presence = HubPresence(outbox, margin_s=10, clock=clock)
    _send(outbox, 3)
    assert presence.on_status(_status(DeviceStatus.ONLINE, "aaaa0001")) is None
    assert outbox.depth() == 0 and presence.resends == 0


def test_new_session_after_the_link_dropped_resends_from_a_margin_before(tmp_path: Path) -> None:
    clock = _Clock()
    outbox = _outbox(tmp_path / "o.db", clock)
    presence = HubPresence(outbox, margin_s=10, clock=clock)
    presence.on_status(_status(DeviceStatus.ONLINE, "aaaa0001"))
    _send(outbox, 2)  # acknowledged at 1000: long before the outage
    clock.now = 1095.0
    _send(outbox, 3)  # acknowledged at 1095: within the margin before the outage
    presence.link_lost(1100.0)
    clock.now = 1104.0
    _send(outbox, 4)  # after the reconnect, before the hub is back
    assert presence.on_status(_status(DeviceStatus.ONLINE, "aaaa0001")) is None, \
        "the retained record of the session already seen"
    assert presence.on_status(_status(DeviceStatus.ONLINE, "bbbb0002")) == 7
    assert outbox.depth() == 7 and presence.suspect_since is None
    assert presence.on_status(_status(DeviceStatus.ONLINE, "bbbb0002")) is None


def test_hub_going_offline_makes_its_next_session_resend(tmp_path: Path) -> None:
    clock = _Clock()
    outbox = _outbox(tmp_path / "o.db", clock)
    presence = HubPresence(outbox, margin_s=0, clock=clock)
    presence.on_status(_status(DeviceStatus.ONLINE, "aaaa0001"))
    _send(outbox, 2)
    clock.now = 1050.0
    presence.on_status(_status(DeviceStatus.OFFLINE, "aaaa0001"))
    _send(outbox, 3)
    assert presence.on_status(_status(DeviceStatus.ONLINE, "cccc0003", hub="hub-2")) == 3, \
        "any hub's new session ends the suspicion"
    assert presence.on_status(_status(DeviceStatus.ONLINE, "bbbb0002")) is None, \
        "nothing is suspect any more"


def test_sessions_seen_survive_a_restart_of_the_device(tmp_path: Path) -> None:
    clock = _Clock()
    outbox = _outbox(tmp_path / "o.db", clock)
    HubPresence(outbox, margin_s=10, clock=clock).on_status(
        _status(DeviceStatus.ONLINE, "aaaa0001"))
    _send(outbox, 2)
    outbox.close()

    reopened = _outbox(tmp_path / "o.db", clock)
    presence = HubPresence(reopened, margin_s=10, clock=clock)
    presence.link_lost(clock.now)
    assert presence.on_status(_status(DeviceStatus.ONLINE, "aaaa0001")) is None
    assert presence.on_status(_status(DeviceStatus.ONLINE, "bbbb0002")) == 2


def test_bad_presence_payloads_are_refused_with_the_reason(tmp_path: Path) -> None:
    clock = _Clock()
    presence = HubPresence(_outbox(tmp_path / "o.db", clock), margin_s=10, clock=clock)
    assert presence.on_payload("hub-1", b"") is None, "a cleared retained record"
    with pytest.raises(MessageError, match="does not match"):
        presence.on_payload("hub-2", encode(_status(DeviceStatus.ONLINE, "aaaa0001")))
    with pytest.raises(MessageError):
        presence.on_payload("hub-1", b'{"v":1,"device_id":"hub-1","state":"online",'
                                     b'"session":"not hex","at":1.0}')
