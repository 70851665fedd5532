"""Which hubs a device hears (issue 11 defect 6): an agent connected under a topic prefix where
no hub announces itself says so, once, in its log and in ``edge-agent status``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cloud_hub.identity.roles import device_identity
from edge_agent.agent import Agent
from edge_agent.cli import main as agent_cli
from edge_agent.telemetry.presence import HubWatch
from shared.messages import DeviceStatus, HubStatus, MessageError, encode
from shared.topics import Topics
from simulator.broker import Broker
from tests.edge_agent.support import Collector, ScriptedSource, agent_config, wait_until


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(state: DeviceStatus, hub: str = "hub-1") -> bytes:
    return encode(HubStatus(device_id=hub, state=state, session="aaaa0001", at=1000.0))


def test_connected_with_no_hub_heard_warns_once_after_the_threshold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.telemetry.presence")
    clock = _Clock()
    watch = HubWatch(prefix="edgeloop/v9", silence_warn_s=60, name="agent d", clock=clock)
    watch.check()
    assert watch.status()["warning"] is None, "not connected: nothing to say about hubs"
    watch.link(True)
    clock.now += 59
    watch.check()
    assert watch.status()["warning"] is None, "not silent for long enough yet"
    clock.now += 2
    for _ in range(3):
        watch.check()
    assert watch.status() == {"hubs_online": [], "prefix": "edgeloop/v9",
                              "warning": "no hub heard under prefix 'edgeloop/v9' for 61 s"}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "check mqtt.topic_prefix" in warned[0], warned

    watch.on_payload("hub-1", _record(DeviceStatus.ONLINE))
    watch.check()
    assert watch.status() == {"hubs_online": ["hub-1"], "prefix": "edgeloop/v9",
                              "warning": None}
    assert any("hub hub-1 is online" in r.getMessage() for r in caplog.records)


def test_a_hub_going_offline_or_cleared_is_no_longer_heard() -> None:
    clock = _Clock()
    watch = HubWatch(prefix="p", silence_warn_s=10, clock=clock)
    watch.link(True)
    watch.on_payload("hub-1", _record(DeviceStatus.ONLINE))
    watch.on_payload("hub-2", _record(DeviceStatus.ONLINE, "hub-2"))
    watch.on_payload("hub-1", _record(DeviceStatus.OFFLINE))
    watch.on_payload("hub-2", b"")  # a cleared retained record
    clock.now += 11
    assert watch.status()["hubs_online"] == []
    assert watch.status()["warning"] is not None


def test_a_link_that_drops_starts_the_silence_again() -> None:
    clock = _Clock()
    watch = HubWatch(prefix="p", silence_warn_s=10, clock=clock)
    watch.link(True)
    clock.now += 8
    watch.link(False)
    watch.link(True)
    clock.now += 8
    assert watch.silent_for() is None, "8 s since the reconnect, not 16"


def test_bad_presence_payloads_are_refused_with_the_reason() -> None:
    watch = HubWatch(prefix="p")
    with pytest.raises(MessageError, match="does not match"):
        watch.on_payload("hub-2", _record(DeviceStatus.ONLINE))
    with pytest.raises(MessageError, match="session"):
        watch.on_payload("hub-1", b'{"v":2,"device_id":"hub-1","state":"online",'
                                  b'"session":"not hex","at":1.0}')
    assert watch.online == {}


@pytest.mark.integration
def test_an_agent_under_a_prefix_no_hub_uses_says_so_in_its_status(
    broker: Broker, collector: Collector, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # A hub is online under the default prefix; the agent was given another one.
    hub_record = HubStatus(device_id="edgeloop-hub", state=DeviceStatus.ONLINE,
                           session="aaaa0001", at=1.0)
    collector.client.publish(Topics().hub_status("edgeloop-hub"), encode(hub_record), qos=1,
                             retain=True).wait_for_publish(10)
    state = tmp_path / "state"
    # The broker lets it write under its own (wrong) prefix: only the missing hub can tell.
    lost = device_identity(Topics("edgeloop/v9"), "lost-1")
    config = agent_config(broker, state, "lost-1", None,
                          mqtt={"topic_prefix": "edgeloop/v9",
                                "password": lost.credential.password},
                          outbox={"hub_silence_warn_s": 0.5}, heartbeat={"interval_s": 0.2})
    broker.revoke("lost-1")  # the harness's identity under the default prefix ...
    broker.add_identities([lost])  # ... gives way to one under the agent's
    agent = Agent(config, source=ScriptedSource(40, rate_hz=50.0))
    agent.start()
    try:
        wait_until(lambda: agent.status()["hub"]["warning"], 20, "the no-hub warning")
        wait_until(lambda: agent.status()["outbox_delivered"] > 0, 20,
                   "messages taken by the broker")
        assert agent.status()["outbox_depth"] > 0, "kept: no hub acknowledged them"
        assert collector.device("lost-1").readings() == 0
    finally:
        agent.stop(timeout=1)
    toml = tmp_path / "agent.toml"
    toml.write_text(f'device_id = "lost-1"\nstate_dir = "{state}"\n')
    capsys.readouterr()
    assert agent_cli(["status", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    hub_line = next(ln for ln in out.splitlines() if ln.startswith("hub"))
    assert "WARNING: no hub heard under prefix 'edgeloop/v9'" in hub_line, out
    assert "waiting for the hub's acknowledgement" in out


def test_msgpack_is_read_only_while_every_hub_online_announces_it() -> None:
    """The telemetry encodings a hub reads come as a user property of its online record
    (shared/packed.py); a hub of an earlier build sends none, and then JSON it is."""
    watch = HubWatch(prefix="p", silence_warn_s=10, clock=_Clock())
    says = [("encodings", "json msgpack")]
    assert not watch.reads("msgpack"), "no hub heard: JSON, which every hub reads"
    watch.on_payload("hub-1", _record(DeviceStatus.ONLINE), says)
    assert watch.reads("msgpack") and watch.reads("json")
    watch.on_payload("hub-2", _record(DeviceStatus.ONLINE, "hub-2"))  # an earlier build
    assert not watch.reads("msgpack")
    watch.on_payload("hub-2", _record(DeviceStatus.OFFLINE, "hub-2"))
    assert watch.reads("msgpack")
    watch.on_payload("hub-1", _record(DeviceStatus.ONLINE), [("other", "msgpack")])
    assert not watch.reads("msgpack"), "only the encodings property counts"
