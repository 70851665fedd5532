"""Fixtures for the edge tests: a signing key (the hub's), a hub stand-in and a collector (the
broker is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.signing import SigningKey, generate_signing_key
from simulator.broker import Broker
from tests.edge_agent.support import Collector, HubStandIn


@pytest.fixture
def signing_key() -> SigningKey:
    return generate_signing_key()


@pytest.fixture
def hub(broker: Broker) -> Iterator[HubStandIn]:
    stand_in = HubStandIn(broker)
    yield stand_in
    stand_in.close()


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    c = Collector(broker)
    yield c
    c.close()
