"""``cloud-hub serve`` as a real process whose broker is down at start (issue 11 defect 8): it
serves its API at once (``/health`` degraded, naming MQTT down) and connects when the broker
comes up, instead of exiting with a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.hub_process import HubProcess
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


def test_a_hub_whose_broker_is_down_serves_its_api_and_connects_later(
    broker: Broker, tmp_path: Path
) -> None:
    broker.stop()
    # The hub's identity (TLS, password, its bound client id): without it a secure broker
    # closes the hub's connection before accepting it, and the hub can never connect.
    process = HubProcess(tmp_path / "hub", mqtt_port=broker.port,
                         extra_env=broker.hub_env("edgeloop-hub")).start(timeout=120, mqtt=False)
    client = HubClient(process.url, process.admin_api_key)
    try:
        health = client.get("/health")
        assert (health["status"], health["mqtt_connected"]) == ("degraded", False), health
        assert client.get("/devices") == [], "the API works without the broker"
        broker.start()
        wait_for(lambda: client.get("/health")["status"] == "ok", 60,
                 "the hub connecting once the broker is up")
        assert process.running
    finally:
        client.close()
        process.stop()
