"""A second ``cloud-hub serve`` (issue 11 defect 4): it claims everything local first (the data
directory's lock, the HTTP port), refuses to start when a hub is online with its MQTT client id,
and never knocks the running hub off the broker. Two real hub processes, a real broker."""

from __future__ import annotations

import queue
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud_hub.cli.client import HubClient
from shared.messages import DeviceStatus, HubStatus, MessageError, decode
from shared.topics import TopicAccess
from simulator.broker import Broker
from simulator.hub_process import HubProcess
from tests.cloud_hub.helpers import Subscriber, publish_wait
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


def _refusal(process: HubProcess) -> str:
    """What a hub that must not start said, once it has exited with status 1."""
    try:
        assert process.launch().wait_exit(120) == 1, process.log_tail()
    finally:
        process.stop()
    return process.log_tail(60)


def _undisturbed(client: HubClient, before: dict[str, object]) -> None:
    after = client.get("/metrics")
    assert after["mqtt_connected"] is True
    assert (after["session"], after["births"], after["takeovers"]) == \
        (before["session"], before["births"], 0), "the running hub was knocked off the broker"


def test_a_second_hub_stops_before_it_can_disturb_the_running_one(
    broker: Broker, hub: HubProcess, client: HubClient, tmp_path: Path
) -> None:
    before = client.get("/metrics")

    login = broker.hub_env("edgeloop-hub")  # the running hub's own credential
    same = HubProcess(hub.data_dir, mqtt_port=broker.port, http_port=hub.http_port,
                      admin_api_key=hub.admin_api_key, extra_env=login)
    text = _refusal(same)
    assert f"error: the data directory {hub.data_dir} is in use by another cloud-hub serve " \
           f"(pid " in text, text

    same_port = HubProcess(tmp_path / "other", mqtt_port=broker.port, http_port=hub.http_port,
                           extra_env=login)
    text = _refusal(same_port)
    assert f"error: cannot listen on 127.0.0.1:{hub.http_port}: Address already in use " \
           f"(another cloud-hub serve?)" in text, text

    same_client_id = HubProcess(tmp_path / "third", mqtt_port=broker.port, extra_env=login)
    text = _refusal(same_client_id)
    assert "error: another hub is running with MQTT client id 'edgeloop-hub' on " \
           f"127.0.0.1:{broker.port} (session {before['session']}" in text, text
    assert "give this hub its own EDGELOOP_MQTT_CLIENT_ID" in text
    _undisturbed(client, before)


def test_of_two_hubs_that_both_passed_the_check_the_younger_yields(
    broker: Broker, hub: HubProcess, client: HubClient, tmp_path: Path
) -> None:
    # The running hub's record is gone (as if both had started at the same instant), so the
    # second passes the check, connects with the same client id and takes the session.
    settings_topic = "edgeloop/v1/hub/edgeloop-hub/status"
    clearer = broker.client(broker.add_client(
        "test-clearer", TopicAccess(publish=(settings_topic,), subscribe=())),
        protocol=mqtt.MQTTv311)
    clearer.connect(broker.host, broker.port)
    clearer.loop_start()
    try:
        publish_wait(clearer, settings_topic, b"", retain=True)
    finally:
        clearer.disconnect()
        clearer.loop_stop()
    younger = HubProcess(tmp_path / "younger", mqtt_port=broker.port,
                         extra_env=broker.hub_env("edgeloop-hub"))
    try:
        assert younger.launch().wait_exit(120) == 1, younger.log_tail()
    finally:
        younger.stop()
    tail = younger.log_tail(60)
    assert "holds the session; this younger one stops" in tail, tail
    wait_for(lambda: client.get("/health")["status"] == "ok", 30, "the older hub connected")
    wait_for(lambda: _retained_session(broker, settings_topic) == client.get("/metrics")["session"],
             30, "the older hub's online record standing")


def _retained_session(broker: Broker, topic: str) -> str | None:
    sub = Subscriber(broker, topic, client_id="test-late-sub")
    try:
        status = decode(HubStatus, bytes(sub.messages.get(timeout=5).payload))
    except (queue.Empty, MessageError):
        return None
    finally:
        sub.close()
    return status.session if status.state == DeviceStatus.ONLINE else None
