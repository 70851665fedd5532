"""Fixtures shared by every test package: a private mosquitto on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulator.broker import Broker, BrokerError, find_mosquitto


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A real mosquitto started for this test with the repo's mosquitto.conf."""
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.fail(f"integration tests need mosquitto: {exc}")
    b = Broker()
    b.start()
    try:
        yield b
    finally:
        b.close()
