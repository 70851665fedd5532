"""The broker's device credentials audited against the registry, on a real secure mosquitto: a
revoked device whose credential outlived its revocation is cut off, the leftover of a failed
enrollment is deleted, an enrolled device whose credential is gone is named, and what the audit
has no business with (enrollments under way, credentials the hub did not make) stays. And a
revoke whose broker step failed is finished by the hub process itself: it retries until the
broker confirms, and a device enrolled again meanwhile keeps its new credential."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from cloud_hub.cli import main
from cloud_hub.cli.serve import ServerHandle
from cloud_hub.db.enrollments import record_enrollment, record_revocation
from cloud_hub.identity.audit import enrollment_mark
from cloud_hub.identity.dynsec import DynsecClient, client_commands
from cloud_hub.identity.roles import device_identity
from cloud_hub.service import Hub
from simulator.broker import Broker, Credential
from simulator.ports import free_port
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import connack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


@pytest.fixture
def api(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url + "/api/v1", headers={"X-API-Key": ADMIN_KEY},
                      timeout=60) as c:
        yield c


def _admin(broker: Broker) -> DynsecClient:
    return DynsecClient(host=broker.host, port=broker.port, credential=broker.admin,
                        ca_file=broker.ca_file)


def _make_credential(broker: Broker, hub: Hub, device_id: str, *, marked_at: float) -> None:
    """A device credential as an enrollment makes it, before it records the device."""
    with _admin(broker) as admin:
        admin.execute(client_commands([device_identity(hub.topics, device_id)],
                                      description=enrollment_mark(marked_at)))


def _on_broker(broker: Broker, device_id: str) -> bool:
    with _admin(broker) as admin:
        answer = admin.execute([{"command": "getClient", "username": device_id}],
                               ignore=("not found",))[0]
    return not answer.get("error")


def _credential(bundle: dict[str, Any]) -> Credential:
    return Credential(bundle["username"], bundle["password"], bundle["username"])


def _drifted(broker: Broker, hub: Hub, api: httpx.Client) -> dict[str, Credential]:
    """A broker out of step with the registry in every way the audit judges; the credentials
    of the devices enrolled through the API."""
    wait_for(lambda: hub.credential_auditor.audits >= 1, timeout=30)  # the one at start
    bundles = {d: _credential(api.post(f"/devices/{d}/enroll").json())
               for d in ("pump-a", "pump-b", "pump-c", "pump-d")}
    with Session(hub.engine) as session:  # a hub process that died before the broker step
        record_revocation(session, "pump-a")
    broker.revoke("pump-c")  # enrolled, credential deleted behind the hub's back
    # pump-d revoked, and being enrolled again: its new credential is made, not yet recorded.
    assert api.post("/devices/pump-d/revoke").status_code == 200
    _make_credential(broker, hub, "pump-d", marked_at=time.time() + 1)
    # An earlier version's credential (no mark) of a device revoked with no broker step.
    with Session(hub.engine) as session:
        record_enrollment(session, ["pump-e"], broker_credential=True)
    bundles["pump-e"] = broker.add_device("pump-e")
    with Session(hub.engine) as session:
        record_revocation(session, "pump-e")
    _make_credential(broker, hub, "pump-x", marked_at=time.time() - 7200)  # failed enrollment
    _make_credential(broker, hub, "pump-y", marked_at=time.time())  # enrollment under way
    bundles["pump-h"] = broker.add_device("pump-h")  # an operator's, never enrolled
    return bundles


EXPECTED_DELETED = {"pump-a", "pump-e", "pump-x"}


def test_the_audit_cuts_off_revoked_devices_and_names_enrolled_ones_without_a_credential(
    broker: Broker, hub: Hub, api: httpx.Client,
) -> None:
    bundles = _drifted(broker, hub, api)
    assert connack(broker, bundles["pump-a"]) == "Success"  # revoked, and still let in

    # A dry run, two clients per listing page: the same verdicts, nothing deleted.
    dry = hub.enrollment.audit(dry_run=True, page=2)
    assert set(dry.deleted) == EXPECTED_DELETED and dry.missing == ["pump-c"], dry
    assert connack(broker, bundles["pump-a"]) == "Success"

    before = hub.credential_auditor.audits
    hub.credential_audit.wake()  # the hub's own audit (every broker_audit_s)
    wait_for(lambda: hub.credential_auditor.audits > before, timeout=30)
    audit = hub.credential_auditor.last
    assert audit is not None and not audit.dry_run
    assert set(audit.deleted) == EXPECTED_DELETED, audit.deleted
    assert "revoked at" in audit.deleted["pump-a"] and "revoked at" in audit.deleted["pump-e"]
    assert "never recorded the device" in audit.deleted["pump-x"]
    assert audit.missing == ["pump-c"]

    assert connack(broker, bundles["pump-a"]) == "Not authorized"
    assert connack(broker, bundles["pump-e"]) == "Not authorized"
    assert not _on_broker(broker, "pump-x")
    assert connack(broker, bundles["pump-b"]) == "Success"  # enrolled: untouched
    assert connack(broker, bundles["pump-h"]) == "Success"  # not the hub's: untouched
    assert _on_broker(broker, "pump-y") and _on_broker(broker, "pump-d")  # under way

    figures = hub.metrics()
    assert figures["credentials_deleted"] == 3 and figures["devices_without_credential"] == 1
    text = hub.metrics_text()
    assert "edgeloop_hub_broker_credentials_deleted_total 3" in text
    assert "edgeloop_hub_devices_without_broker_credential 1" in text


def _hub_env(hub: Hub, monkeypatch: pytest.MonkeyPatch, **override: object) -> None:
    s = hub.settings
    values: dict[str, object] = {
        "data_dir": s.data_dir, "mqtt_host": s.mqtt_host, "mqtt_port": s.mqtt_port,
        "mqtt_client_id": s.mqtt_client_id, "mqtt_password": s.mqtt_password,
        "mqtt_tls": "true", "mqtt_ca_file": s.mqtt_ca_file, "topic_prefix": s.topic_prefix,
        **override}
    for name, value in values.items():
        monkeypatch.setenv(f"EDGELOOP_{name.upper()}", str(value))


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_broker_audit_from_the_cli_says_what_it_deletes_and_exits_1_while_devices_lack_one(
    broker: Broker, hub: Hub, api: httpx.Client, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundles = _drifted(broker, hub, api)
    _hub_env(hub, monkeypatch)

    code, out, err = _cli(capsys, "broker", "audit", "--dry-run")
    assert code == 1, err
    for device_id in EXPECTED_DELETED:
        assert f"would delete the credential of {device_id}" in out
    assert "no credential for enrolled device pump-c" in out
    assert connack(broker, bundles["pump-a"]) == "Success"

    code, out, err = _cli(capsys, "broker", "audit")
    assert code == 1, err  # pump-c is left for the operator
    assert "deleted the credential of pump-a: revoked at" in out
    assert "3 deleted, 1 enrolled device(s) without one" in out
    assert connack(broker, bundles["pump-a"]) == "Not authorized"

    assert api.post("/devices/pump-c/revoke").status_code == 200  # the operator's step
    code, out, err = _cli(capsys, "broker", "audit")
    assert code == 0, out + err
    assert "0 deleted, 0 enrolled device(s) without one" in out


def test_broker_audit_against_a_broker_that_does_not_answer_is_a_one_line_error(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    _hub_env(hub, monkeypatch, mqtt_port=port, publish_timeout_s=1.0)
    code, out, err = _cli(capsys, "broker", "audit")
    assert code == 1
    assert err.startswith(f"error: the broker at 127.0.0.1:{port}:") and "Traceback" not in err


def test_enrollments_and_revocations_during_an_audit_are_not_named_missing(
    hub: Hub, api: httpx.Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another hub process enrolls one device and revokes another while this one lists the
    broker's clients: the listing is stale for both, and neither is named missing."""
    from cloud_hub.identity import audit as module

    assert api.post("/devices/pump-old/enroll").status_code == 201
    real = module._listed

    def listed_meanwhile(admin: DynsecClient, page: int) -> Any:
        found = real(admin, page)
        assert api.post("/devices/pump-new/enroll").status_code == 201
        assert api.post("/devices/pump-old/revoke").status_code == 200
        return found

    monkeypatch.setattr(module, "_listed", listed_meanwhile)
    report = module.audit_credentials(hub.enrollment._admin(), hub.engine)
    assert report.missing == [] and report.deleted == {}, report


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
