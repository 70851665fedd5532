"""The broker's own figures (mosquitto's ``$SYS/broker/``) relayed in every hub's metrics: the
messages a full session queue made the broker drop show up as
``edgeloop_broker_publish_dropped_total``, on a real secure broker with a small queue cap; a
broker whose hub role predates the figures refuses them without costing the hub its session,
until ``cloud-hub broker sync-roles`` adds what the role lacks; and what the hub makes of bad
``$SYS`` payloads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.cli import main
from cloud_hub.identity.dynsec import DynsecClient, role_acls, role_update_commands
from cloud_hub.identity.roles import hub_identities
from cloud_hub.metrics.broker import FIGURES, GRANT_HINT, BrokerStats
from cloud_hub.metrics.exposition import BROKER_PREFIX
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch, encode
from shared.topics import BROKER_STATS, Topics
from simulator.broker import Broker
from tests.cloud_hub.conftest import started_hub
from tests.cloud_hub.helpers import publish_wait, publisher_client, wait_for

QUEUE_CAP = 20
SENT = 100
DEVICE = "pump-3"


@pytest.fixture
def small_broker() -> Iterator[Broker]:
    """The secure broker, publishing its figures every second, with a queue of 20 messages
    per session."""
    b = Broker(settings=f"sys_interval 1\nmax_queued_messages {QUEUE_CAP}\n")
    b.start()
    try:
        yield b
    finally:
        b.close()


def broker_figures(hub: Hub) -> dict[str, float]:
    """The hub's ``edgeloop_broker_*`` samples, read back with Prometheus' parser."""
    return {s.name.removeprefix(BROKER_PREFIX): s.value
            for f in text_string_to_metric_families(hub.metrics_text())
            for s in f.samples if s.name.startswith(BROKER_PREFIX)}


def batch(seq: int) -> bytes:
    return encode(TelemetryBatch(device_id=DEVICE, epoch="0123456789abcdef", seq=seq,
                                 channels=["a"], ts=[1000.0 + seq], values=[[float(seq)]]))


def test_messages_the_broker_drops_for_an_absent_hub_show_in_its_metrics(
    small_broker: Broker, tmp_path: Path,
) -> None:
    broker = small_broker
    with started_hub(broker, tmp_path / "hub") as hub:
        # The figures come at once (retained, as the broker last published them), then
        # every second: those that count the hub itself come with a later one. A cycle can
        # fall between the hub's CONNECT and its SUBSCRIBE (one client, no subscription), so
        # wait for both counts, not the first.
        heard = wait_for(lambda: (f := hub.metrics()["broker"]).get("clients_connected", 0) >= 1
                         and f.get("subscriptions", 0) >= 1 and f, 20, "the broker's figures")
        assert heard["subscribed"] is True
        assert heard["version"].startswith("mosquitto version 2.")
        assert heard["age_s"] < 5
        dropped_before = heard.get("publish_dropped", 0.0)
    # The hub is away: its session holds QUEUE_CAP messages, and the broker acknowledges the
    # rest to their sender and drops them.
    client = publisher_client(broker)
    try:
        for seq in range(SENT):
            publish_wait(client, broker.topics.telemetry(DEVICE), batch(seq))
    finally:
        client.disconnect()
    with started_hub(broker, tmp_path / "hub") as hub:
        dropped = SENT - QUEUE_CAP
        figures = wait_for(
            lambda: hub.metrics()["broker"].get("publish_dropped", 0) >= dropped_before + dropped
            and hub.metrics()["broker"], 20, "the broker's count of dropped messages")
        assert figures["publish_dropped"] == dropped_before + dropped
        wait_for(lambda: hub.metrics()["telemetry_batches"] == QUEUE_CAP, 20,
                 "the queued batches stored")
        # In the Prometheus text too, as a counter, with the figures the JSON has. The broker
        # publishes its figures one message each, dropped before received: wait for a cycle
        # that has both (the retained ones may date from the middle of the flood).
        exported = wait_for(lambda: (f := broker_figures(hub)).get("publish_dropped_total")
                            == dropped_before + dropped
                            and f.get("publish_received_total", 0) >= SENT and f, 10,
                            "the exported counts")
        assert exported["stats_subscribed"] == 1.0
        assert exported["uptime_seconds"] >= 1
        assert exported["stats_age_seconds"] < 5
        kinds = {f.name: f.type for f in text_string_to_metric_families(hub.metrics_text())}
        assert kinds[BROKER_PREFIX + "publish_dropped"] == "counter"
        assert kinds[BROKER_PREFIX + "store_messages"] == "gauge"
    assert hub.metrics()["telemetry_batches"] == QUEUE_CAP  # the hub stored what was queued


def _role_of_an_earlier_version(broker: Broker, hub_id: str) -> dict[str, str]:
    """The hub's identities as this version makes them, less the ACL entries for the broker's
    figures (which an earlier version did not give); the hub's environment."""
    env = broker.hub_env(hub_id)
    control = DynsecClient(host=broker.host, port=broker.port, credential=broker.admin,
                           ca_file=broker.ca_file).start()
    try:
        control.execute([{"command": "removeRoleACL", "rolename": f"hub:{hub_id}",
                          "acltype": t, "topic": BROKER_STATS}
                         for t in ("subscribePattern", "publishClientReceive")])
    finally:
        control.stop()
    return env


def test_a_hub_whose_role_lacks_the_figures_keeps_its_session_until_sync_roles_grants_them(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    hub_id = "hub-old-role"
    env = _role_of_an_earlier_version(broker, hub_id)
    caplog.set_level(logging.INFO, logger="cloud_hub.metrics.broker")
    # A hub that does not manage the broker's identities: the operator grants the figures.
    with started_hub(broker, tmp_path / "hub", hub_id=hub_id, mqtt_dynsec=False) as hub:
        assert hub.mqtt.broker_stats is not None
        hub.mqtt.broker_stats.retry_s = 0.5
        wait_for(lambda: hub.metrics()["broker"]["subscribed"] is False, 20,
                 "the broker's refusal")
        # The refusal costs nothing else: the hub announced itself and stores what comes.
        assert hub.mqtt.wait_ready(10)
        client = publisher_client(broker)
        try:
            publish_wait(client, broker.topics.telemetry(DEVICE), batch(0))
        finally:
            client.disconnect()
        wait_for(lambda: hub.metrics()["telemetry_batches"] == 1, 20, "the batch stored")
        assert broker_figures(hub) == {"stats_subscribed": 0.0}
        assert hub.metrics()["broker"]["age_s"] is None
        wait_for(lambda: hub.mqtt.broker_stats is not None
                 and hub.mqtt.broker_stats.refusals >= 3, 20, "two retries refused")

        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert main(["broker", "sync-roles"]) == 0
        out = capsys.readouterr().out
        assert f"added hub:{hub_id}: subscribePattern {BROKER_STATS}" in out
        assert f"added hub:{hub_id}: publishClientReceive {BROKER_STATS}" in out
        # The hub asks again and gets them, without a restart.
        wait_for(lambda: hub.metrics()["broker"].get("uptime_s") is not None, 20,
                 "the figures after sync-roles")
        assert broker_figures(hub)["stats_subscribed"] == 1.0
        assert main(["broker", "sync-roles"]) == 0  # nothing more to add
        assert "(" not in capsys.readouterr().out.splitlines()[-1]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert GRANT_HINT in warned[0] and "$SYS/broker/#" in warned[0]
    assert any("grants this hub $SYS/broker/# now" in r.getMessage() for r in caplog.records)


def test_a_hub_that_manages_the_brokers_identities_gives_its_own_role_the_figures(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    hub_id = "hub-old-role"
    _role_of_an_earlier_version(broker, hub_id)
    caplog.set_level(logging.INFO)
    with started_hub(broker, tmp_path / "hub", hub_id=hub_id) as hub:
        # Refused at the first connect, then granted without a restart or an operator.
        wait_for(lambda: hub.metrics()["broker"].get("uptime_s") is not None, 30,
                 "the figures after the hub brought its role up to date")
        assert hub.metrics()["broker"]["subscribed"] is True
    said = [r.getMessage() for r in caplog.records]
    assert any("refused this hub $SYS/broker/#" in m for m in said), said
    assert any(f"added to the hub's roles what this version needs: hub:{hub_id}: "
               f"subscribePattern {BROKER_STATS}" in m for m in said), said
    assert any("grants this hub $SYS/broker/# now" in m for m in said), said


def test_sync_roles_without_the_brokers_admin_rights_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGELOOP_MQTT_DYNSEC", "false")
    assert main(["broker", "sync-roles"]) == 2
    assert "EDGELOOP_MQTT_DYNSEC and EDGELOOP_MQTT_PASSWORD" in capsys.readouterr().err


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"twelve", b"nan", b"inf", b"1e400", b"-5", b"12abc", b"9" * 100_000,
], ids=["empty", "not-utf8", "word", "nan", "inf", "overflow", "negative", "trailing-junk",
        "oversized"])
def test_a_figure_it_cannot_read_is_skipped_and_the_last_good_one_kept(payload: bytes) -> None:
    clock = Clock()
    stats = BrokerStats(clock)
    stats.observe("$SYS/broker/publish/messages/dropped", b"7")
    clock.now = 130.0
    stats.observe("$SYS/broker/publish/messages/dropped", payload)
    snap = stats.snapshot()
    assert snap["publish_dropped"] == 7.0
    assert snap["age_s"] == 30.0  # a figure it could not read is not a sign of life


def test_the_uptime_is_read_from_its_text_and_unknown_topics_are_ignored() -> None:
    clock = Clock()
    stats = BrokerStats(clock)
    assert stats.snapshot() == {"version": None, "subscribed": None, "age_s": None}
    stats.observe("$SYS/broker/uptime", b"3600 seconds")
    stats.observe("$SYS/broker/load/messages/received/1min", b"12.5")  # a rate: not kept
    stats.observe("$SYS/broker/retained messages/count", b"53")
    clock.now = 102.5
    assert stats.snapshot() == {"uptime_s": 3600.0, "retained_messages": 53.0,
                                "version": None, "subscribed": None, "age_s": 2.5}
    assert BrokerStats.wants("$SYS/broker/uptime")
    assert not BrokerStats.wants("edgeloop/v1/devices/pump-1/telemetry")


def test_every_figure_has_a_distinct_name_and_a_counter_ends_in_total() -> None:
    assert len({f.key for f in FIGURES}) == len({f.name for f in FIGURES}) == len(FIGURES)
    for f in FIGURES:
        assert f.name.endswith("_total") == (f.kind == "counter"), f


def test_a_role_update_adds_what_this_version_needs_and_leaves_the_rest_alone() -> None:
    topics = Topics()
    wanted = hub_identities(topics, "hub-1", "a-password")
    [hub, _admin, check] = wanted
    before = [a for a in role_acls(hub.access) if a["topic"] != BROKER_STATS]
    before.append({"acltype": "publishClientSend", "topic": "site/extra/#", "priority": 0,
                   "allow": True})  # an operator's own
    denied = [{**a, "allow": False} for a in role_acls(check.access)]  # an operator's deny
    roles = {hub.rolename: before, check.rolename: denied}  # broker-admin: not found
    assert role_update_commands(wanted, roles) == [
        {"command": "addRoleACL", "rolename": "hub:hub-1", "acltype": acltype,
         "topic": BROKER_STATS, "priority": 0, "allow": True}
        for acltype in ("subscribePattern", "publishClientReceive")]
    roles[hub.rolename] = role_acls(hub.access)
    assert role_update_commands(wanted, roles) == []
