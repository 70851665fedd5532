"""Fixtures for the edge tests: a broker whose persistence works, a signing key (the hub's), a
hub stand-in and a collector."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.signing import SigningKey, generate_signing_key
from simulator.broker import Broker, BrokerError, find_mosquitto
from tests.edge_agent.support import Collector, HubStandIn


@pytest.fixture
def broker() -> Iterator[Broker]:
    """Like tests/conftest.py's, but mosquitto can write its persistence file: started as root it
    drops to the ``mosquitto`` user, which cannot write into a private temporary directory, and
    then loses sessions and retained messages across a restart (which these tests depend on)."""
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.fail(f"integration tests need mosquitto: {exc}")
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-edge-mosquitto-"))
    os.chmod(workdir, 0o777)  # mosquitto runs as its own user and must write here
    b = Broker(workdir=workdir)
    b.start()
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(workdir, ignore_errors=True)


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
