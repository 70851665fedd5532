"""A fleet split over several processes delivers every reading to a real hub through a real
secure broker: each process runs its share of the device cores, and what they report merges
into one fleet's counts. Nothing the pool started outlives it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cloud_hub.core.config import Settings
from cloud_hub.db.tables import Device
from cloud_hub.service import Hub
from simulator.broker import Broker
from simulator.fleet import DeviceSpec
from simulator.fleet_pool import FleetPool
from tests.integration.support import wait_for

pytestmark = pytest.mark.integration

DEVICES = [f"pool-{i}" for i in range(4)]


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    broker.add_devices(DEVICES)
    h = Hub(Settings(data_dir=tmp_path / "hub", admin_api_key="pool-admin-key-0123456789",
                     mqtt_dynsec=False, **broker.hub_settings("pool-hub")))
    h.enrollment.enroll(DEVICES)
    h.start()
    try:
        yield h
    finally:
        h.stop()


def _stored(hub: Hub) -> dict[str, int]:
    with Session(hub.engine) as session:
        return {d.device_id: d.telemetry_readings for d in session.exec(select(Device))}


def test_a_fleet_in_two_processes_delivers_every_reading_to_the_hub(
    broker: Broker, hub: Hub, tmp_path: Path
) -> None:
    pool = FleetPool(
        host=broker.host, port=broker.port, state_root=tmp_path / "devices",
        workdir=tmp_path / "pool", auth=broker.device_auth, processes=2,
        trust_keys={hub.signing_key.key_id: hub.signing_key.public_b64()},
        devices=[DeviceSpec(device_id=d, profile="server", seed=i, rate_hz=10.0, history_s=3.0)
                 for i, d in enumerate(DEVICES)],
        overrides={"telemetry": {"batch_max_readings": 20, "batch_max_age_s": 0.2}})
    try:
        assert pool.start(timeout=60)["devices"] == len(DEVICES)
        pids = pool.pids
        assert len(set(pids)) == 2
        wait_for(lambda: pool.counters()["samples_generated"] >= len(DEVICES) * 60, 30,
                 "readings produced in both processes")
    finally:
        final = pool.stop(flush_timeout=20)
    assert final["drained"], "outboxes not emptied by the hub's acknowledgements"
    generated = final["samples_generated"]
    assert sorted(generated) == DEVICES and all(n > 0 for n in generated.values())
    wait_for(lambda: all(_stored(hub).get(d, 0) >= n for d, n in generated.items()), 20,
             "every reading stored by the hub")
    assert _stored(hub) == generated, "each reading stored once, none lost"
    assert all(final["statuses"][d]["readings_stored"] == n for d, n in generated.items())
    assert all(s["drops"] == 0 for s in final["statuses"].values())
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
