"""Every route of the hub's API, called with no key, a read key, an admin key and a revoked
key: 401 / 403 / 2xx as its scope says.

The cases come from the application's own routes: a route added later is either in the table
below (its scope and a call that succeeds with the right key) or its tests fail and name it.
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from sqlmodel import Session
from starlette.routing import Mount

from cloud_hub.api.main import create_app
from cloud_hub.core.config import Settings
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.service import Hub
from shared.messages import DriftState, DriftSummary
from tests.cloud_hub.api_support import EPOCH, World, started_world
from tests.cloud_hub.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]

PUBLIC = "public"
READ = "read"
ADMIN = "admin"
# "-bearer": the same key as ``Authorization: Bearer KEY`` instead of ``X-API-Key``.
KEY_KINDS = ("none", "read", "admin", "revoked", "read-bearer", "revoked-bearer")


@dataclass(frozen=True)
class Call:
    """How to call a route so that it succeeds with a key of the right scope."""

    params: Callable[[World], dict[str, Any]] = lambda w: {}  # path parameters (setup here)
    query: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    json_for: Callable[[World], Any] | None = None  # a JSON body that needs setup


def _device(w: World) -> dict[str, Any]:
    return {"device_id": w.known_device()}


def _model(w: World) -> dict[str, Any]:
    return {"name": w.model[0], "version": w.model[1]}


def _new_model(w: World) -> dict[str, Any]:
    return {"name": w.model[0], "version": w.registered_model()}


def _job(w: World) -> dict[str, Any]:
    job = w.admin("POST", "/training-jobs/csv", params={"name": "auth-slow"},
                  content=b"slow,b\n1,2\n3,4\n")  # waits for its cancel (api_support._run_training)
    return {"job_id": job["id"]}


def _api_key(w: World) -> dict[str, Any]:
    return {"key_id": w.admin("POST", "/api-keys", json={"name": w.fresh("k")})["id"]}


def _enrolled(w: World) -> dict[str, Any]:
    device = w.fresh("auth-enrolled")
    w.admin("POST", f"/devices/{device}/enroll")
    return {"device_id": device}


# The collect key of the job _finished_enrollment_job made last (the call's body needs it).
_COLLECT_KEY: dict[str, str] = {}


def _enrollment_job(w: World) -> dict[str, Any]:
    job = w.admin("POST", "/enrollment-jobs", json={"device_ids": [w.fresh("auth-job")]})
    _COLLECT_KEY["last"] = job["collect_key"]
    return {"job_id": job["id"]}


def _finished_enrollment_job(w: World) -> dict[str, Any]:
    job_id = _enrollment_job(w)["job_id"]
    wait_for(lambda: w.admin("GET", f"/enrollment-jobs/{job_id}")["status"] == "succeeded",
             30, "the enrollment job")
    return {"job_id": job_id}


def _rule(w: World) -> dict[str, Any]:
    rule = w.admin("POST", "/webhooks", json={"name": w.fresh("hook"),
                                              "url": "http://127.0.0.1:9/hook",
                                              "group": "auth-nobody"})
    return {"rule_id": rule["id"]}


def _drifting_device(w: World) -> dict[str, Any]:
    device = w.known_device()
    summary = DriftSummary(device_id=device, epoch=EPOCH, seq=0, start=1.0, end=2.0,
                           state=DriftState.STABLE)
    with Session(w.hub.engine) as session:
        store_batch(session, IngestBatch(drift=[summary]))
    return {"device_id": device}


def _running_device(w: World) -> str:
    """A device that reports the world's model active (so a retraining can be opened)."""
    from cloud_hub.db.tables import Device

    device = w.known_device()
    with Session(w.hub.engine) as session:
        row = session.get(Device, device)
        assert row is not None
        row.active_name, row.active_version = w.model
        session.add(row)
        session.commit()
    return device


def _policy(w: World) -> dict[str, Any]:
    group = w.fresh("auth-group")
    w.admin("PUT", f"/retrain-policies/{group}", json={"enabled": False})
    return {"group": group}


def _retrain_run(w: World) -> dict[str, Any]:
    run = w.admin("POST", "/retrain-runs", json={"devices": [_running_device(w)],
                                                  "reason": "auth test"})
    return {"run_id": run["id"]}


def _retirable_key(w: World) -> dict[str, Any]:
    old = w.admin("GET", "/keys")["active"]
    w.admin("POST", "/keys/rotate", json={"overlap_s": 0})
    return {"key_id": old}


# Routes anyone may call (the console's login page and assets: tests/console/test_console_auth).
PUBLIC_ROUTES: dict[tuple[str, str], Call] = {
    ("GET", "/openapi.json"): Call(),
    ("GET", "/docs"): Call(),
    ("GET", "/docs/oauth2-redirect"): Call(),
    ("GET", "/api/v1/health"): Call(),
    ("GET", "/api/v1/signing-key"): Call(),
}

# Static files mounted under a path (served to anyone: the docs page's own scripts).
PUBLIC_MOUNTS = {"/docs/assets", "/ui/static"}  # the console's assets: its login page needs them

# Every other route: the scope it needs, and a call that succeeds with that scope.
SCOPED_ROUTES: dict[tuple[str, str], tuple[str, Call]] = {
    ("GET", "/api/v1/metrics"): (READ, Call()),
    ("GET", "/api/v1/hubs"): (READ, Call()),
    ("GET", "/api/v1/api-keys"): (ADMIN, Call()),
    ("POST", "/api/v1/api-keys"): (ADMIN, Call(json={"name": "made-by-auth-test"})),
    ("DELETE", "/api/v1/api-keys/{key_id}"): (ADMIN, Call(_api_key)),
    ("GET", "/api/v1/devices"): (READ, Call()),
    ("GET", "/api/v1/devices/{device_id}"): (READ, Call(_device)),
    ("PATCH", "/api/v1/devices/{device_id}"): (ADMIN, Call(_device, json={"tags": ["x"]})),
    ("PUT", "/api/v1/devices/{device_id}/desired"): (ADMIN, Call(_device,
                                                                 json={"model": None})),
    ("POST", "/api/v1/devices/{device_id}/enroll"): (ADMIN, Call(
        lambda w: {"device_id": w.fresh("auth-new")})),
    ("POST", "/api/v1/devices/{device_id}/revoke"): (ADMIN, Call(_enrolled)),
    ("POST", "/api/v1/enrollments"): (ADMIN, Call(json_for=lambda w: {
        "device_ids": [w.fresh("auth-bulk")]})),
    ("GET", "/api/v1/enrollments"): (READ, Call()),
    ("POST", "/api/v1/enrollment-jobs"): (ADMIN, Call(json_for=lambda w: {
        "device_ids": [w.fresh("auth-bulk-job")]})),
    ("GET", "/api/v1/enrollment-jobs/{job_id}"): (ADMIN, Call(_enrollment_job)),
    ("POST", "/api/v1/enrollment-jobs/{job_id}/bundles"): (ADMIN, Call(
        _finished_enrollment_job, json={"collect_key": "not-the-key"},
        json_for=lambda w: {"collect_key": _COLLECT_KEY["last"]})),
    ("GET", "/api/v1/telemetry"): (READ, Call(query={"device_id": "auth-dev-1"})),
    ("GET", "/api/v1/telemetry/summary"): (READ, Call()),
    ("GET", "/api/v1/devices/{device_id}/telemetry"): (READ, Call(_device,
                                                                 query={"resolution": "1h"})),
    ("GET", "/api/v1/anomalies"): (READ, Call()),
    ("GET", "/api/v1/dead-letters"): (READ, Call()),
    ("GET", "/api/v1/models"): (READ, Call()),
    ("GET", "/api/v1/models/compare"): (READ, Call(query={"a": "auth-ae:1", "b": "auth-ae:1"})),
    ("GET", "/api/v1/models/{name}/{version}"): (READ, Call(_model)),
    ("GET", "/api/v1/models/{name}/{version}/tflite"): (READ, Call(_model)),
    ("POST", "/api/v1/models/{name}/{version}/publish"): (ADMIN, Call(_new_model)),
    ("POST", "/api/v1/models/{name}/{version}/retire"): (ADMIN, Call(_new_model)),
    ("POST", "/api/v1/models/{name}/{version}/rollback"): (ADMIN, Call(
        _model, json_for=lambda w: {"devices": [w.known_device()]})),
    ("GET", "/api/v1/keys"): (READ, Call()),
    ("POST", "/api/v1/keys/rotate"): (ADMIN, Call(json={"overlap_s": 0})),
    ("POST", "/api/v1/keys/{key_id}/retire"): (ADMIN, Call(_retirable_key, json={"force": True})),
    ("POST", "/api/v1/training-jobs"): (ADMIN, Call(json={"name": "auth-m",
                                                          "channels": ["nope"]})),
    ("POST", "/api/v1/training-jobs/csv"): (ADMIN, Call(query={"name": "auth-csv"},
                                                        content=b"a,b\n1,2\n3,4\n")),
    ("GET", "/api/v1/training-jobs"): (READ, Call()),
    ("GET", "/api/v1/training-jobs/{job_id}"): (READ, Call(lambda w: {"job_id": 1})),
    ("POST", "/api/v1/training-jobs/{job_id}/cancel"): (ADMIN, Call(_job)),
    ("POST", "/api/v1/rollouts"): (ADMIN, Call(json_for=lambda w: {
        "model": {"name": w.model[0], "version": w.model[1]},
        "target": {"devices": [w.known_device()]}, "policy": {"min_observation_s": 3600}})),
    ("GET", "/api/v1/rollouts"): (READ, Call()),
    ("GET", "/api/v1/rollouts/{rollout_id}"): (READ, Call(lambda w: {"rollout_id": 1})),
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): (ADMIN, Call(
        lambda w: {"rollout_id": w.rollout()})),
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): (ADMIN, Call(
        lambda w: {"rollout_id": w.rollout(then="pause")})),
    ("POST", "/api/v1/rollouts/{rollout_id}/abort"): (ADMIN, Call(
        lambda w: {"rollout_id": w.rollout()})),
    ("POST", "/api/v1/rollouts/{rollout_id}/rollback"): (ADMIN, Call(
        lambda w: {"rollout_id": w.rollout()})),
    ("GET", "/api/v1/incidents"): (READ, Call()),
    ("GET", "/api/v1/incidents/{incident_id}"): (READ, Call(
        lambda w: {"incident_id": w.incident()})),
    ("POST", "/api/v1/incidents/{incident_id}/acknowledge"): (ADMIN, Call(
        lambda w: {"incident_id": w.incident()}, json={"note": "seen"})),
    ("POST", "/api/v1/incidents/{incident_id}/resolve"): (ADMIN, Call(
        lambda w: {"incident_id": w.incident()}, json={})),
    ("GET", "/api/v1/webhooks"): (READ, Call()),
    ("POST", "/api/v1/webhooks"): (ADMIN, Call(json={
        "name": "auth-hook", "url": "http://127.0.0.1:9/hook", "group": "auth-nobody"})),
    ("GET", "/api/v1/webhooks/deliveries"): (READ, Call()),
    ("PATCH", "/api/v1/webhooks/{rule_id}"): (ADMIN, Call(_rule, json={"enabled": False})),
    ("DELETE", "/api/v1/webhooks/{rule_id}"): (ADMIN, Call(_rule)),
    ("GET", "/api/v1/drift"): (READ, Call()),
    ("GET", "/api/v1/drift/{device_id}"): (READ, Call(_drifting_device)),
    ("GET", "/api/v1/retrain-policies"): (READ, Call()),
    ("PUT", "/api/v1/retrain-policies/{group}"): (ADMIN, Call(
        lambda w: {"group": w.fresh("auth-group")}, json={"enabled": False})),
    ("DELETE", "/api/v1/retrain-policies/{group}"): (ADMIN, Call(_policy)),
    ("GET", "/api/v1/retrain-runs"): (READ, Call()),
    ("GET", "/api/v1/retrain-runs/{run_id}"): (READ, Call(_retrain_run)),
    ("POST", "/api/v1/retrain-runs"): (ADMIN, Call(json_for=lambda w: {
        "devices": [_running_device(w)], "reason": "auth test"})),
}


def _app_routes() -> tuple[list[tuple[str, str]], set[str]]:
    """(method, path) of every route the hub's application serves (HEAD left out), and the
    paths of its mounts."""
    with tempfile.TemporaryDirectory() as folder:
        hub = Hub(Settings(data_dir=Path(folder)))
        try:
            contexts = list(iter_route_contexts(create_app(hub).routes))
        finally:
            hub.engine.dispose()
    found = {(method, c.path) for c in contexts
             for method in (getattr(c.original_route, "methods", None) or ())
             if method != "HEAD" and c.path
             # The console's routes use session cookies, not X-API-Key: they have their own
             # generated table in tests/console/test_console_auth.py.
             and not c.path.startswith("/ui")}
    mounts = {str(c.path) for c in contexts if isinstance(c.original_route, Mount)}
    return sorted(found, key=lambda r: (r[1], r[0])), mounts


ROUTES, MOUNTS = _app_routes()


def test_every_mount_is_known_to_serve_public_files() -> None:
    assert MOUNTS <= PUBLIC_MOUNTS, f"mounts not in PUBLIC_MOUNTS: {sorted(MOUNTS - PUBLIC_MOUNTS)}"


def test_the_table_names_only_routes_that_exist() -> None:
    stale = (set(PUBLIC_ROUTES) | set(SCOPED_ROUTES)) - set(ROUTES)
    assert not stale, f"routes in the auth table that the app no longer has: {sorted(stale)}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with started_world(tmp_path_factory.mktemp("hub")) as w:
        yield w


def _expected(scope: str, kind: str) -> int | None:
    """The status for a key kind; None: any 2xx."""
    if scope == PUBLIC or kind == "admin" or (kind == "read" and scope == READ):
        return None
    if kind == "read":
        return 403
    return 401


@pytest.mark.parametrize("kind", KEY_KINDS)
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_route_answers_each_kind_of_key_as_its_scope_says(
    world: World, method: str, path: str, kind: str
) -> None:
    if (method, path) in PUBLIC_ROUTES:
        scope, call = PUBLIC, PUBLIC_ROUTES[(method, path)]
    elif (method, path) in SCOPED_ROUTES:
        scope, call = SCOPED_ROUTES[(method, path)]
    else:
        pytest.fail(f"{method} {path} is not in the auth table of {__file__}: add it to "
                    "PUBLIC_ROUTES or SCOPED_ROUTES with its scope and a call that succeeds")
    key_kind, bearer = kind.removesuffix("-bearer"), kind.endswith("-bearer")
    expected = _expected(scope, key_kind)
    # The setup (a fresh rollout, key, model …) runs only where the call must succeed.
    params = call.params(world) if expected is None else _placeholders(path)
    key = None if kind == "none" else getattr(world.keys, key_kind)
    headers = ({} if key is None else {"Authorization": f"Bearer {key}"} if bearer
               else {"X-API-Key": key})
    body = call.json_for(world) if call.json_for is not None and expected is None else call.json
    response = world.http.request(method, path.format(**params), params=call.query,
                                  json=body, content=call.content, headers=headers)
    if expected is None:
        assert 200 <= response.status_code < 300, (kind, response.status_code, response.text)
    else:
        assert response.status_code == expected, (kind, response.text)
        assert "detail" in response.json()


def _placeholders(path: str) -> dict[str, Any]:
    names = [name for _, name, _, _ in string.Formatter().parse(path) if name]
    return {name: ("auth-ae" if name == "name" else "auth-dev-1" if name == "device_id"
                   else 1) for name in names}
