"""Nothing is lost when the network breaks: a device cut off; the broker restarted, with or
without its saved state, while the hub is away; the broker and the hub started only after the
agents; an agent whose state is wiped mid-run.

Real mosquitto, real ``cloud-hub serve``, real agents (some behind a chaos proxy). At the end
every reading each source produced must be stored at the hub exactly once. What makes it so is
end-to-end delivery: an agent keeps a message until the hub's acknowledgement covers it, not
just until the broker's PUBACK, and sends again what an acknowledgement shows missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.enroll import enroll_many, hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from simulator.netem import LinkProxy
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[HubClient]:
    process = HubProcess(tmp_path / "hub", mqtt_port=broker.port,
                         extra_env=broker.hub_env("edgeloop-hub")).start(timeout=120)
    client = HubClient(process.url, process.admin_api_key)
    try:
        yield client
    finally:
        client.close()
        process.stop()


@pytest.fixture
def fleet(broker: Broker, hub: HubClient,
          tmp_path: Path) -> Iterator[tuple[Fleet, dict[str, LinkProxy]]]:
    proxies = {d: LinkProxy(broker.host, broker.port, name=d) for d in ("pump-001", "pump-002")}
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
              mqtt_auth=hub_enrollment(hub, tmp_path / "bundles"), state_root=tmp_path / "agents",
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
        ts = np.asarray(hub.get_telemetry(device_id)["ts"])
        assert len(ts) == n and np.all(np.diff(ts) > 0)
    assert all(s["drops"] == 0 for s in fleet.statuses().values())


def test_a_device_cut_off_buffers_and_catches_up_losing_nothing(
    hub: HubClient, fleet: tuple[Fleet, dict[str, LinkProxy]]
) -> None:
    agents, proxies = fleet
    wait_for(lambda: all(_stored(hub).get(d, 0) > 20 for d in proxies), 30, "first telemetry")
    proxies["pump-001"].cut()
    # A simulated reading is taken once the wall clock passes its timestamp: whatever pump-001
    # measures from here on can reach the hub only through the link just cut.
    cut_at = time.time()
    wait_for(lambda: not agents.statuses()["pump-001"]["connected"], 30,
             "pump-001 noticing it is offline")
    # Offline, the device keeps measuring: its outbox grows while the hub gets nothing it
    # measured after the cut. (Not "the hub's count stays put": what the broker took just
    # before the cut may still be on its way to a hub that runs behind, as under load.)
    depth = agents.statuses()["pump-001"]["outbox_depth"]
    wait_for(lambda: agents.statuses()["pump-001"]["outbox_depth"] >= depth + 3, 30,
             "pump-001 buffering while offline")
    assert max(hub.get_telemetry("pump-001")["ts"]) < cut_at, "stored while cut off"
    proxies["pump-001"].restore()
    restored_at = time.time()
    wait_for(lambda: max(hub.get_telemetry("pump-001")["ts"]) > restored_at, 30,
             "pump-001 streaming again once the link is back")
    _assert_everything_stored_once(hub, agents)
    assert agents.statuses()["pump-001"]["reconnects"] >= 1


@pytest.fixture
def direct_fleet(broker: Broker, hub: HubClient, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
              mqtt_auth=hub_enrollment(hub, tmp_path / "bundles"), state_root=tmp_path / "direct",
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
    # plain subscriptions from persistence, not $share ones): what the agents send before the
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


def _summary(hub: HubClient) -> dict[str, dict[str, Any]]:
    return {r["device_id"]: r for r in hub.get_all("/telemetry/summary")}


def _fleet(broker: Broker, root: Path, n: int = 3, *, hub: HubClient | None = None,
           **outbox: float) -> Fleet:
    """``n`` agents, enrolled through ``hub``; without one, with broker credentials an
    operator made (the hub enrolls them later, in its registry only)."""
    login = hub_enrollment(hub, root / "bundles") if hub is not None else broker.device_auth
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port, state_root=root, trust_keys={},
              overrides={"outbox": dict(outbox)} if outbox else {}, mqtt_auth=login)
    for i in range(n):
        f.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", seed=i, rate_hz=10.0))
    return f


def _taken_by_a_broker_nobody_listens_to(agents: Fleet) -> None:
    """Agents (re)connect to a broker where no hub is subscribed, and send: every PUBACK is
    real, and every message goes nowhere."""
    wait_for(lambda: all(s["connected"] for s in agents.statuses().values()), 60,
             "agents connecting to the broker")
    sent = {d: s["readings_sent"] for d, s in agents.statuses().items()}
    wait_for(lambda: all(s["readings_sent"] > sent[d] + 20
                         for d, s in agents.statuses().items()), 30,
             "readings acknowledged by the broker while no hub was subscribed")


# -- issue 11, defect 1: the agents start first, then the broker, then the hub -----------------


def test_agents_started_before_the_broker_and_the_hubs_first_start_lose_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    broker.stop()
    agents = _fleet(broker, tmp_path / "agents", n=2)
    agents.start()
    process: HubProcess | None = None
    client: HubClient | None = None
    try:
        wait_for(lambda: all(s["outbox_depth"] >= 2 for s in agents.statuses().values()), 30,
                 "agents buffering while there is no broker")
        broker.start()
        _taken_by_a_broker_nobody_listens_to(agents)
        # The hub's first start: it enrolls the devices the operator gave credentials to.
        process = HubProcess(tmp_path / "new-hub", mqtt_port=broker.port, extra_env={
            **broker.hub_env("edgeloop-hub"), "EDGELOOP_MQTT_DYNSEC": "false"}
        ).start(timeout=120)
        client = HubClient(process.url, process.admin_api_key)
        enroll_many(client, sorted(agents.devices), tmp_path / "bundles")
        _assert_everything_stored_once(client, agents)
        summary = _summary(client)
        for device_id in agents.devices:
            row = summary[device_id]
            assert (row["seq_first"], row["missing_batches"], row["epochs"]) == (0, 0, 1), row
        assert all(s["resent"] > 0 for s in agents.statuses().values()), \
            "what the broker took for nobody was sent again"
    finally:
        agents.stop()
        if client is not None:
            client.close()
        if process is not None:
            process.stop()


# -- issue 10: an agent that loses its state starts a new stream epoch -------------------------


def test_an_agent_whose_state_is_wiped_mid_run_loses_nothing_it_sends_after(
    broker: Broker, hub: HubClient, tmp_path: Path
) -> None:
    agents = _fleet(broker, tmp_path / "agents", n=1, hub=hub)
    [device_id] = agents.devices
    agents.start()
    try:
        wait_for(lambda: _stored(hub).get(device_id, 0) > 20, 30, "first telemetry")
        agents.stop()  # flushed: the hub acknowledged everything
        before = _stored(hub)[device_id]
        assert before == agents.samples_generated()[device_id]
        shutil.rmtree(agents.devices[device_id].agent.config.state_dir)  # seq starts at 0 again
        agents.restart(device_id)
        wait_for(lambda: _stored(hub).get(device_id, 0) > before + 20, 30,
                 "telemetry of the new epoch stored, not taken for duplicates")
        _assert_everything_stored_once(hub, agents)
    finally:
        agents.stop()
    row = _summary(hub)[device_id]
    assert (row["epochs"], row["missing_batches"], row["seq_first"]) == (2, 0, 0), row


# -- the broker loses its state while the hub is away ------------------------------------------
# A broker that comes back without its saved state (a crash between two saves, a fail-over to
# a fresh broker) has no session for the hub: it acknowledges what the agents send before the
# hub has subscribed again and delivers it to nobody. The hub's acknowledgements, once it is
# back, show the agents what is missing, and they send it again.


def _restart_without_state(broker: Broker) -> None:
    broker.stop()
    for saved in broker.data_dir.glob("mosquitto.db*"):
        saved.unlink()
    broker.start()


@pytest.fixture
def hub_process(broker: Broker, tmp_path: Path) -> Iterator[HubProcess]:
    process = HubProcess(tmp_path / "hub", mqtt_port=broker.port,
                         extra_env=broker.hub_env("edgeloop-hub")).start(timeout=120)
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


def _stopped_hub_then_broker_without_state(
    broker: Broker, process: HubProcess, hub: HubClient, agents: Fleet
) -> None:
    wait_for(lambda: all(_stored(hub).get(d, 0) > 20 for d in agents.devices), 30,
             "first telemetry")
    process.stop()  # the hub announces it is offline
    _restart_without_state(broker)
    _taken_by_a_broker_nobody_listens_to(agents)
    process.start(timeout=120)


def test_broker_restarted_without_its_state_while_the_hub_was_stopped_loses_nothing(
    broker: Broker, hub_process: HubProcess, hub_client: HubClient, tmp_path: Path
) -> None:
    agents = _fleet(broker, tmp_path / "agents", hub=hub_client)
    agents.start()
    try:
        _stopped_hub_then_broker_without_state(broker, hub_process, hub_client, agents)
        _assert_everything_stored_once(hub_client, agents)
        assert all(s["resent"] > 0 for s in agents.statuses().values())
    finally:
        agents.stop()
    assert all(r["missing_batches"] == 0 for r in _summary(hub_client).values())


def test_broker_restarted_without_its_state_while_the_hub_was_paused_loses_nothing(
    broker: Broker, hub_process: HubProcess, hub_client: HubClient, tmp_path: Path
) -> None:
    # No offline record this time: the hub is paused, not stopped.
    agents = _fleet(broker, tmp_path / "agents", hub=hub_client)
    agents.start()
    try:
        wait_for(lambda: all(_stored(hub_client).get(d, 0) > 20 for d in agents.devices), 30,
                 "first telemetry")
        assert hub_process.pid is not None
        os.kill(hub_process.pid, signal.SIGSTOP)
        _restart_without_state(broker)
        _taken_by_a_broker_nobody_listens_to(agents)
        os.kill(hub_process.pid, signal.SIGCONT)
        _assert_everything_stored_once(hub_client, agents)
    finally:
        agents.stop()


def test_without_acknowledgements_acted_on_the_same_outage_loses_readings(
    broker: Broker, hub_process: HubProcess, hub_client: HubClient, tmp_path: Path
) -> None:
    # The control experiment: agents that wait an hour before sending anything again lose, in
    # the scenario above, what the other tests recover; so those tests prove the recovery.
    agents = _fleet(broker, tmp_path / "agents", hub=hub_client, ack_timeout_s=3600.0)
    agents.start()
    try:
        _stopped_hub_then_broker_without_state(broker, hub_process, hub_client, agents)
        mark = _stored(hub_client)
        wait_for(lambda: all(_stored(hub_client).get(d, 0) > mark.get(d, 0) + 20
                             for d in agents.devices), 30, "telemetry flowing again")
        agents.stop(timeout=2.0)  # what is not acknowledged would stay in the outboxes
        lost = _lost_after_stop(hub_client, agents)
    finally:
        agents.stop()
    assert set(lost) == set(agents.devices) and all(n > 20 for n in lost.values()), lost
    assert all(r["missing_batches"] > 0 for r in _summary(hub_client).values()), \
        "the loss shows in the summary"


# -- the hub's queue at the broker overflows while the hub is away -----------------------------
# Past max_queued_messages, mosquitto drops what comes for the hub after acknowledging it to the
# agent, and counts it; the hub relays the count (edgeloop_broker_publish_dropped_total). Back,
# the hub stores what was queued, its acknowledgements show the agents the rest missing, and
# they send it again.

QUEUE_CAP = 10


def test_a_full_hub_queue_at_the_broker_loses_nothing_and_the_hub_reports_the_drops(
    tmp_path: Path,
) -> None:
    with Broker(settings=f"sys_interval 1\nmax_queued_messages {QUEUE_CAP}\n") as broker:
        process = HubProcess(tmp_path / "hub", mqtt_port=broker.port,
                             extra_env=broker.hub_env("edgeloop-hub")).start(timeout=120)
        client = HubClient(process.url, process.admin_api_key)
        agents = _fleet(broker, tmp_path / "agents", hub=client)
        agents.start()
        try:
            wait_for(lambda: all(_stored(client).get(d, 0) > 20 for d in agents.devices), 30,
                     "first telemetry")
            dropped_before = client.get("/metrics")["broker"].get("publish_dropped", 0)
            process.stop()
            sent = {d: s["batches_sent"] for d, s in agents.statuses().items()}
            # 3 agents x 8 batches or more, for a queue of 10
            wait_for(lambda: all(s["batches_sent"] > sent[d] + 8
                                 for d, s in agents.statuses().items()), 60,
                     "batches acknowledged by the broker while the hub was away")
            process.start(timeout=120)
            wait_for(lambda: client.get("/metrics")["broker"].get("publish_dropped", 0)
                     - dropped_before >= 3 * 8 - QUEUE_CAP, 30,
                     "the broker's count of dropped messages, through the hub")
            _assert_everything_stored_once(client, agents)
            assert sum(s["resent"] for s in agents.statuses().values()) > 0, \
                "what the broker dropped was sent again"
            assert all(r["missing_batches"] == 0 for r in _summary(client).values())
        finally:
            agents.stop()
            client.close()
            process.stop()
