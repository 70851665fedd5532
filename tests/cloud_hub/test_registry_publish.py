"""Registry + publisher: retained, signed manifest and chunks; the parity gate; retiring."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.service import Hub
from shared.codec import reassemble
from shared.manifest import parse_manifest
from shared.signing import load_public_key, verify_manifest
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import Subscriber, retained_under, tiny_artifact

pytestmark = [pytest.mark.integration, pytest.mark.hub]
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url + "/api/v1", timeout=30) as client:
            yield client
    finally:
        server.stop()


def _retained(broker: Broker, hub: Hub, name: str, version: int) -> dict[str, bytes]:
    """Everything retained under the model's topics, seen by a brand-new subscriber."""
    prefix = hub.topics.model_prefix(name, version)
    return retained_under(broker, f"{prefix}/#", f"{prefix}/marker")


def test_publish_retains_a_manifest_and_chunks_a_fresh_subscriber_can_verify(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    assert api.get(f"/models/{name}/{version}", headers=ADMIN).json()["status"] == "draft"

    published = api.post(f"/models/{name}/{version}/publish", headers=ADMIN)
    assert published.status_code == 200, published.text
    assert published.json()["status"] == "published"

    retained = _retained(broker, hub, name, version)
    manifest = parse_manifest(retained.pop(hub.topics.manifest(name, version)))
    key = api.get("/signing-key").json()
    verify_manifest(manifest, {key["key_id"]: load_public_key(key["public_key"])})
    assert manifest.chunks.count >= 2
    chunks = [retained[hub.topics.chunk(name, version, i)] for i in range(manifest.chunks.count)]
    model = reassemble(chunks, chunk_hashes=manifest.chunks.sha256, size=manifest.size,
                       sha256=manifest.sha256)
    assert model == api.get(f"/models/{name}/{version}/tflite", headers=ADMIN).content


def test_retire_clears_the_retained_manifest_and_chunks(
    broker: Broker, hub: Hub, api: httpx.Client
) -> None:
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    assert api.post(f"/models/{name}/{version}/publish", headers=ADMIN).status_code == 200
    assert _retained(broker, hub, name, version)

    retired = api.post(f"/models/{name}/{version}/retire", headers=ADMIN)
    assert retired.json()["status"] == "retired"
    assert _retained(broker, hub, name, version) == {}
    again = api.post(f"/models/{name}/{version}/publish", headers=ADMIN)
    assert again.status_code == 409


def test_a_model_that_failed_the_parity_gate_cannot_be_published(
    broker: Broker,
    hub: Hub, api: httpx.Client
) -> None:
    name, version = hub.register(tiny_artifact(agreement=0.9), name="pump-ae")
    response = api.post(f"/models/{name}/{version}/publish", headers=ADMIN)
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert detail["figure"] == "decision_agreement"
    assert detail["value"] == 0.9 and detail["minimum"] == 0.99
    assert "0.9000 is below the minimum 0.9900" in detail["message"]
    assert _retained(broker, hub, name, version) == {}
    assert api.get(f"/models/{name}/{version}", headers=ADMIN).json()["status"] == "draft"


def test_desired_is_retained_per_device(broker: Broker, hub: Hub, api: httpx.Client) -> None:
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    body = {"model": {"name": name, "version": version}}
    assert api.put("/devices/pump-1/desired", json=body, headers=ADMIN).status_code == 409
    api.post(f"/models/{name}/{version}/publish", headers=ADMIN)
    response = api.put("/devices/pump-1/desired", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["desired_model"] == {"name": name, "version": version}
    sub = Subscriber(broker, hub.topics.desired("pump-1"), client_id="dev")
    try:
        payload = sub.collect(1)[hub.topics.desired("pump-1")]
    finally:
        sub.close()
    from shared.messages import Desired, decode

    desired = decode(Desired, payload)
    assert desired.model is not None and desired.model.version == version


def test_compare_shows_two_versions_side_by_side(hub: Hub, api: httpx.Client) -> None:
    hub.register(tiny_artifact(threshold=0.5), name="pump-ae")
    hub.register(tiny_artifact(threshold=0.7), name="pump-ae")
    data = api.get("/models/compare", params={"a": "pump-ae:1", "b": "pump-ae:2"},
                   headers=ADMIN).json()
    assert data["a"]["threshold"] == 0.5 and data["b"]["threshold"] == 0.7
    assert "threshold" in data["differs"]
