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
