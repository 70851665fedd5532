"""Fixtures for hub tests: a started Hub on a private broker with a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.core.config import Settings
from cloud_hub.service import Hub
from simulator.broker import Broker
from tests.cloud_hub.helpers import enroll_devices, stand_in_training

ADMIN_KEY = "admin-key-for-tests-0123456789"


def hub_settings(broker: Broker, data_dir: Path, *, hub_id: str | None = None,
                 **extra: object) -> Settings:
    """A hub on ``broker`` (its identity created there: TLS and a password on a secure one)."""
    mqtt = broker.hub_settings(hub_id or f"hub-{broker.port}")
    return Settings(
        data_dir=data_dir, admin_api_key=ADMIN_KEY, ingest_batch_wait_s=0.02,
        publish_timeout_s=10.0, chunk_size=1024, rollout_tick_s=0.1,
        **{**mqtt, **extra},  # type: ignore[arg-type]
    )


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    h = Hub(hub_settings(broker, tmp_path / "hub"), run_training=stand_in_training())
    enroll_devices(h)
    h.start()
    try:
        yield h
    finally:
        h.stop()
