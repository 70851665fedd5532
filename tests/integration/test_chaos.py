"""Nothing is lost when the network breaks: a device cut off; the broker restarted, with or
without its saved state, while the hub is away.

Real mosquitto, real ``cloud-hub serve``, real agents (some behind a chaos proxy). At the end
every reading each source produced must be stored at the hub exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from simulator.netem import LinkProxy
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[HubClient]:
    process = HubProcess(tmp_path / "hub", mqtt_port=broker.port).start(timeout=120)
    client = HubClient(process.url, process.admin_api_key)
    try:
        yield client
    finally:
        client.close()
        process.stop()


@pytest.fixture
def fleet(broker: Broker, tmp_path: Path) -> Iterator[tuple[Fleet, dict[str, LinkProxy]]]:
    proxies = {d: LinkProxy(broker.host, broker.port, name=d) for d in ("pump-001", "pump-002")}
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port, state_root=tmp_path / "agents",
              trust_keys={})
    for i, (device_id, proxy) in enumerate(proxies.items()):
        f.add(DeviceSpec(device_id=device_id, seed=i, rate_hz=20.0), mqtt_port=proxy.port)
    f.start()
    try:
        yield f, proxies
    finally:
        f.stop()
        for proxy in proxies.values():
            proxy.close()


def _stored(hub: HubClient) -> dict[str, int]:
    return {r["device_id"]: r["readings"] for r in hub.get("/telemetry/summary")}


def _lost_after_stop(hub: HubClient, fleet: Fleet) -> dict[str, int]:
    """Stop the agents, let the hub store what they flushed; readings never stored, per device."""
    fleet.stop()
    generated = fleet.samples_generated()

    def complete() -> dict[str, int] | None:
        s = _stored(hub)
        return s if all(s.get(d, 0) >= n for d, n in generated.items()) else None

    # The agents flushed their outboxes as they stopped: wait until the hub has it all, or
    # until its counts stop moving (what is missing then is never coming).
    deadline = time.monotonic() + 60
    last, still_since = _stored(hub), time.monotonic()
    while complete() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        now = _stored(hub)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > 3.0:
            break
    stored = _stored(hub)
    return {d: n - stored.get(d, 0) for d, n in generated.items() if stored.get(d, 0) != n}


def _assert_everything_stored_once(hub: HubClient, fleet: Fleet) -> None:
    lost = _lost_after_stop(hub, fleet)
    assert not lost, f"readings generated but not stored, per device: {lost}"
    generated = fleet.samples_generated()
    for device_id, n in generated.items():
        ts = np.asarray(hub.get("/telemetry", device_id=device_id)["ts"])
        assert len(ts) == n and np.all(np.diff(ts) > 0)
    assert all(s["drops"] == 0 for s in fleet.statuses().values())


def test_a_device_cut_off_buffers_and_catches_up_losing_nothing(
    hub: HubClient, fleet: tuple[Fleet, dict[str, LinkProxy]]
) -> None:
    agents, proxies = fleet
    wait_for(lambda: all(_stored(hub).get(d, 0) > 20 for d in proxies), 30, "first telemetry")
    proxies["pump-001"].cut()
    wait_for(lambda: not agents.statuses()["pump-001"]["connected"], 30,
             "pump-001 noticing it is offline")
    before = _stored(hub)["pump-001"]
    # Offline, the device keeps measuring: its outbox grows while the hub sees nothing new.
    wait_for(lambda: agents.statuses()["pump-001"]["outbox_depth"] >= 3, 30,
             "pump-001 buffering while offline")
    assert _stored(hub)["pump-001"] == before
    proxies["pump-001"].restore()
    wait_for(lambda: _stored(hub)["pump-001"] > before + 20, 30, "pump-001 catching up")
    _assert_everything_stored_once(hub, agents)
    assert agents.statuses()["pump-001"]["reconnects"] >= 1


@pytest.fixture
def direct_fleet(broker: Broker, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port, state_root=tmp_path / "direct",
              trust_keys={})
    for i in range(3):
        f.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", seed=i, rate_hz=10.0))
    f.start()
    try:
        yield f
    finally:
        f.stop()


def test_broker_restart_loses_nothing(broker: Broker, hub: HubClient, direct_fleet: Fleet) -> None:
    # The hub's session and subscriptions must survive the restart (mosquitto 2.0.11 restores
    # plain subscriptions from persistence, not $share ones): what the agents resend before the
    # hub is back is queued for it, not acknowledged and delivered to nobody.
    agents = direct_fleet
    wait_for(lambda: all(_stored(hub).get(d, 0) > 20 for d in agents.devices), 30,
             "first telemetry")
    broker.stop()
    wait_for(lambda: not any(s["connected"] for s in agents.statuses().values()), 30,
             "agents noticing the broker is gone")
    # Stay down long enough for every agent to buffer a few batches, as a real restart would.
    wait_for(lambda: all(s["outbox_depth"] >= 4 for s in agents.statuses().values()), 30,
             "agents buffering while the broker is down")
    broker.start()
    wait_for(lambda: all(s["connected"] for s in agents.statuses().values()), 60,
             "agents reconnecting after the broker restart")
    mark = _stored(hub)
    wait_for(lambda: all(_stored(hub)[d] > mark[d] + 20 for d in agents.devices), 60,
             "telemetry flowing again after the restart")
    _assert_everything_stored_once(hub, agents)


# -- the broker loses its state while the hub is away ------------------------------------------
# A broker that comes back without its saved state (a crash between two saves, a fail-over to
# a fresh broker) has no session for the hub: it acknowledges what the agents send before the
# hub has subscribed again and delivers it to nobody. The hub's new session makes every agent
# send again what was acknowledged since its outage began.


def _restart_without_state(broker: Broker) -> None:
    broker.stop()
    for saved in broker.data_dir.glob("mosquitto.db*"):
        saved.unlink()
    broker.start()


@pytest.fixture
def hub_process(broker: Broker, tmp_path: Path) -> Iterator[HubProcess]:
    process = HubProcess(tmp_path / "hub", mqtt_port=broker.port).start(timeout=120)
    try:
        yield process
    finally:
        if process.pid is not None:
            os.kill(process.pid, signal.SIGCONT)  # harmless unless a test left it paused
        process.stop()


@pytest.fixture
def hub_client(hub_process: HubProcess) -> Iterator[HubClient]:
    client = HubClient(hub_process.url, hub_process.admin_api_key)  # the same across restarts
    try:
        yield client
    finally:
        client.close()


def _fleet(broker: Broker, root: Path, **outbox: float) -> Fleet:
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port, state_root=root, trust_keys={},
              overrides={"outbox": dict(outbox)} if outbox else {})
    for i in range(3):
        f.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", seed=i, rate_hz=10.0))
    return f


def _acknowledged_with_no_hub(agents: Fleet) -> None:
    """Agents reconnect to a broker that lost its state and send, while no hub listens."""
    wait_for(lambda: all(s["connected"] for s in agents.statuses().values()), 60,
             "agents reconnecting to the broker")
    sent = {d: s["readings_sent"] for d, s in agents.statuses().items()}
    wait_for(lambda: all(s["readings_sent"] > sent[d] + 20
                         for d, s in agents.statuses().items()), 30,
             "readings acknowledged by the broker while no hub was subscribed")


def _stopped_hub_then_broker_without_state(
    broker: Broker, process: HubProcess, hub: HubClient, agents: Fleet
) -> None:
    wait_for(lambda: all(_stored(hub).get(d, 0) > 20 for d in agents.devices), 30,
             "first telemetry")
    process.stop()  # the hub announces it is offline
    _restart_without_state(broker)
    _acknowledged_with_no_hub(agents)
    process.start(timeout=120)


def test_hub_back_after_the_broker_lost_its_state_is_sent_everything_again(
    broker: Broker, hub_process: HubProcess, hub_client: HubClient, tmp_path: Path
) -> None:
    agents = _fleet(broker, tmp_path / "agents")
    agents.start()
    try:
        _stopped_hub_then_broker_without_state(broker, hub_process, hub_client, agents)
        wait_for(lambda: all(s["hub_resends"] >= 1 for s in agents.statuses().values()), 30,
                 "every agent sending again for the hub's new session")
        _assert_everything_stored_once(hub_client, agents)
    finally:
        agents.stop()


def test_hub_slower_than_the_agents_after_the_broker_lost_its_state_gets_everything(
    broker: Broker, hub_process: HubProcess, hub_client: HubClient, tmp_path: Path
) -> None:
    # No offline record this time: the hub is paused, not stopped, so only the agents' own
    # outage tells them that what the broker acknowledged from then on may have gone nowhere.
    agents = _fleet(broker, tmp_path / "agents")
    agents.start()
    try:
        wait_for(lambda: all(_stored(hub_client).get(d, 0) > 20 for d in agents.devices), 30,
                 "first telemetry")
        assert hub_process.pid is not None
        os.kill(hub_process.pid, signal.SIGSTOP)
        _restart_without_state(broker)
        _acknowledged_with_no_hub(agents)
        os.kill(hub_process.pid, signal.SIGCONT)
        wait_for(lambda: all(s["hub_resends"] >= 1 for s in agents.statuses().values()), 60,
                 "every agent sending again for the hub's new session")
        _assert_everything_stored_once(hub_client, agents)
    finally:
        agents.stop()


def test_without_resending_the_same_outage_loses_readings(
    broker: Broker, hub_process: HubProcess, hub_client: HubClient, tmp_path: Path
) -> None:
    # The control experiment: the scenario above really loses what it must recover.
    agents = _fleet(broker, tmp_path / "agents", resend_window_s=0)
    agents.start()
    try:
        _stopped_hub_then_broker_without_state(broker, hub_process, hub_client, agents)
        lost = _lost_after_stop(hub_client, agents)
    finally:
        agents.stop()
    assert set(lost) == set(agents.devices) and all(n > 20 for n in lost.values()), lost
