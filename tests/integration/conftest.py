"""Fixtures of the end-to-end tests: a real `cloud-hub serve` process and its admin client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.hub_process import HubProcess


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[HubProcess]:
    process = HubProcess(tmp_path / "hub", mqtt_port=broker.port,
                         extra_env=broker.hub_env("edgeloop-hub"))
    process.start(timeout=120)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(hub: HubProcess) -> Iterator[HubClient]:
    c = HubClient(hub.url, hub.admin_api_key)
    try:
        yield c
    finally:
        c.close()
