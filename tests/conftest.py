"""Fixtures shared by every test package: a private mosquitto on a free port; and the
Hypothesis profiles of the property tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from simulator.broker import Broker, BrokerError, find_mosquitto

# `make test` (and CI) run the property tests deterministically, with a bounded number of
# examples each: the same inputs on every run, nothing saved between runs. To search wider
# while working on a boundary: HYPOTHESIS_PROFILE=explore (random, 2,000 examples, and a
# database of failing examples under .hypothesis/).
settings.register_profile("ci", derandomize=True, database=None, max_examples=100,
                          deadline=None, print_blob=True)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end tests (tests/integration) run first, each file's order kept: on `make
    test`'s two workers (pytest-xdist, one file per worker, handed out in this order) the long
    files start first and the many short ones fill in at the end, so neither worker finishes
    long before the other."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/integration/") else 1)
