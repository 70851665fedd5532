"""A revoke whose broker step failed is finished by the hub process itself, on a real secure
mosquitto: the revoke answers 503, the process retries until the broker confirms, and the
device is refused from then on, with no second revoke and no audit; a device enrolled again
meanwhile keeps its new credential."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cloud_hub.cli.serve import ServerHandle
from cloud_hub.service import Hub
from simulator.broker import Broker, Credential
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import connack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


@pytest.fixture
def api(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url + "/api/v1", headers={"X-API-Key": ADMIN_KEY},
                      timeout=60) as c:
        yield c


def _enrolled(api: httpx.Client, device_id: str) -> Credential:
    answer = api.post(f"/devices/{device_id}/enroll")
    assert answer.status_code == 201, answer.text
    bundle = answer.json()
    return Credential(bundle["username"], bundle["password"], bundle["username"])


def test_a_revoke_the_broker_did_not_confirm_is_retried_until_the_device_is_refused(
    broker: Broker, hub: Hub, api: httpx.Client,
) -> None:
    credential = _enrolled(api, "valve-1")
    broker.stop()
    answer = api.post("/devices/valve-1/revoke")
    assert answer.status_code == 503, answer.text
    assert "the hub keeps retrying until it does" in answer.json()["detail"]
    assert hub.revocations.pending == ["valve-1"]
    assert "edgeloop_hub_revocations_unconfirmed 1" in hub.metrics_text()
    wait_for(lambda: hub.revocations.failures >= 1, timeout=60,
             what="a retry while the broker is away")

    broker.start()
    wait_for(lambda: hub.revocations.pending == [], timeout=90,
             what="the retry once the broker is back")
    assert connack(broker, credential) == "Not authorized"
    figures = hub.metrics()
    assert figures["revocations_unconfirmed"] == 0
    assert figures["revocations_confirmed_late"] == 1
    assert "edgeloop_hub_revocations_confirmed_late_total 1" in hub.metrics_text()
    # Revoking again now only says it is done.
    assert api.post("/devices/valve-1/revoke").status_code == 409


def test_a_retry_leaves_the_new_credential_of_a_device_enrolled_again_meanwhile(
    broker: Broker, hub: Hub, api: httpx.Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker refuses the revocation's deletions (and the retries'), but not the
    enrollment's own clearing, made from this thread."""
    _enrolled(api, "valve-2")
    admin = hub.enrollment._admin()
    real = admin.execute
    away = threading.Event()
    away.set()
    test_thread = threading.current_thread()

    def refusing(commands: list[dict[str, Any]], **kwargs: Any) -> Any:
        if away.is_set() and threading.current_thread() is not test_thread and any(
                c["command"] == "deleteClient" for c in commands):
            raise TimeoutError("no answer from the broker's control topic")
        return real(commands, **kwargs)

    monkeypatch.setattr(admin, "execute", refusing)
    assert api.post("/devices/valve-2/revoke").status_code == 503
    wait_for(lambda: hub.revocations.failures >= 1, timeout=60, what="a refused retry")

    bundle = hub.enrollment.enroll(["valve-2"])[0]  # enrolled again, with a new credential
    assert bundle.username is not None and bundle.password is not None
    away.clear()
    wait_for(lambda: hub.revocations.pending == [], timeout=90, what="the retry")
    assert connack(broker, Credential(bundle.username, bundle.password,
                                      bundle.username)) == "Success"
    assert hub.revocations.snapshot()["revocations_confirmed_late"] == 1
