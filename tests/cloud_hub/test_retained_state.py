"""A broker that lost its retained records (crashed between two saves, or its disk was lost)
gets every one of them back from the hub, exactly as they were: the trust lists, the published
versions' manifests and chunks, each device's ``desired`` with its ``issued_at``. At the hub's
start, and after every reconnect. Real secure mosquitto, killed and its persistence file
removed."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
from sqlmodel import Session

from cloud_hub.registry.lifecycle import publish_model
from cloud_hub.rollouts.desired import set_desired
from cloud_hub.rollouts.retained import RetainedState
from cloud_hub.service import Hub
from shared.messages import Desired, ModelRef
from simulator.broker import Broker
from tests.cloud_hub.conftest import hub_settings
from tests.cloud_hub.helpers import (
    enroll_devices,
    retained_under,
    stand_in_training,
    tiny_artifact,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.hub]


def _retained(broker: Broker) -> dict[str, bytes]:
    """Every retained record under the hub's desired, model and trust topics, as a brand-new
    subscriber sees them."""
    prefix = broker.topics.prefix
    got = retained_under(broker, f"{prefix}/#", f"{prefix}/test/marker")
    kinds = ("/desired", "/manifest", "/chunks/", "/trust/")
    return {t: p for t, p in got.items() if p and any(k in t for k in kinds)}


def _lose_everything(broker: Broker) -> None:
    """A crash, and the persistence file gone with it: the broker restarts empty (the
    identities live in the dynamic-security plugin's own file)."""
    broker.kill()
    for saved in broker.data_dir.glob("mosquitto.db*"):
        saved.unlink()
    broker.start()


def test_the_hub_writes_its_retained_records_again_after_the_broker_lost_them(
        broker: Broker, tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    hub = Hub(hub_settings(broker, data_dir), run_training=stand_in_training())
    enroll_devices(hub)
    hub.start()
    try:
        with Session(hub.engine) as session:  # a key rotation: the first signed trust list
            hub.keys.rotate(session, overlap_s=3600, publisher=hub.publisher)
        name, version = hub.register(tiny_artifact(), name="pump-ae")
        with Session(hub.engine) as session:
            publish_model(session, name=name, version=version, releases=hub.releases)
        with Session(hub.engine) as session:
            issued = set_desired(session, releases=hub.releases, device_ids=["pump-1", "pump-2"],
                                 model=ModelRef(name=name, version=version),
                                 config={"hold_off": 3})
        with Session(hub.engine) as session:  # pump-3: told to run nothing new
            set_desired(session, releases=hub.releases, device_ids=["pump-3"], model=None)
        before = _retained(broker)
        desired = msgspec.json.decode(before[hub.topics.desired("pump-1")], type=Desired)
        assert desired.issued_at == issued and desired.config == {"hold_off": 3}
        assert hub.topics.desired("pump-3") in before
        assert hub.topics.manifest(name, version) in before
        assert any("/trust/" in t for t in before)
        chunks = [t for t in before if "/chunks/" in t]
        assert chunks, "the model's chunks are retained"

        # The hub is connected when the broker comes back empty: it writes everything again.
        asserted = hub.retained.last
        assert asserted is not None
        lost_at = time.time()
        _lose_everything(broker)
        wait_for(lambda: (hub.retained.last is not None and hub.retained.last.at > lost_at),
                 timeout=60, what="the hub writing its retained records again")
        assert _retained(broker) == before, "every record back, byte for byte"
        assert hub.retained.last.desired == 3 and hub.retained.last.models == 1
    finally:
        hub.stop()

    # Down together (a host restart): the broker comes back empty, nothing is retained until
    # the hub starts again.
    _lose_everything(broker)
    assert _retained(broker) == {}
    hub = Hub(hub_settings(broker, data_dir), run_training=stand_in_training())
    hub.start()
    try:
        assert _retained(broker) == before, "written again before start returned"
    finally:
        hub.stop()


def test_one_hub_process_writes_the_fleets_desired_records_and_another_takes_over(
        broker: Broker, tmp_path: Path) -> None:
    """With two hub processes on one database, the desired records (one per device) are
    written again by the one holding the lease only; the other writes the trust lists and the
    models. When the holder stops, the other takes the lease and writes the desired records,
    the broker having lost them meanwhile."""
    hub = Hub(hub_settings(broker, tmp_path / "hub"), run_training=stand_in_training())
    enroll_devices(hub)
    hub.start()
    # What a second hub process brings: its own lease holder id (same engine and session).
    other = RetainedState(hub.engine, hub.keys, hub.publisher, hub.mqtt, holder="other-hub")
    try:
        name, version = hub.register(tiny_artifact(), name="pump-ae")
        with Session(hub.engine) as session:
            publish_model(session, name=name, version=version, releases=hub.releases)
        with Session(hub.engine) as session:
            set_desired(session, releases=hub.releases, device_ids=["pump-1", "pump-2"],
                        model=ModelRef(name=name, version=version), config={})
        before = _retained(broker)
        assert hub.topics.desired("pump-1") in before
        assert hub.retained.leading

        lost_at = time.time()
        _lose_everything(broker)
        wait_for(lambda: (hub.retained.last is not None and hub.retained.last.at > lost_at),
                 timeout=60, what="the lease holder writing its retained records again")
        wait_for(lambda: other.catch_up() is not None or (
            other.last is not None and other.last.at > lost_at),
            timeout=60, what="the other process writing its records again")
        assert other.last is not None and not other.leading
        assert other.last.desired == 0 and other.last.models == 1
        assert hub.retained.last.desired == 2
        assert _retained(broker) == before

        hub.retained.stop()  # the holder stops cleanly: it gives the lease up
        lost_at = time.time()
        _lose_everything(broker)
        wait_for(lambda: hub.mqtt.births > 2 and hub.mqtt.connected, timeout=60,
                 what="the session born again")
        wait_for(lambda: other.catch_up() is not None and other.leading, timeout=60,
                 what="the other process taking the lease over and writing the records")
        assert other.last is not None and other.last.desired == 2
        assert _retained(broker) == before, "every record back from the other process"
    finally:
        other.stop()
        hub.stop()
