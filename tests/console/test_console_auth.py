"""Every console route (from the app's own routes) against no session, a read key's session,
an admin key's session and the session of a key revoked since: redirect/401, 403 or 2xx as
its scope says; every action also refuses a missing CSRF token. The console's sessions are
cookies, not the API's X-API-Key header, so its routes have this table instead of the API's
(``tests/cloud_hub/test_api_auth.py`` leaves ``/ui`` to it). A route added later is either in
the table or the test fails naming it."""

from __future__ import annotations

import re
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlmodel import Session

from cloud_hub.api.main import create_app
from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.core.config import Settings
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.registry.lifecycle import publish_model
from cloud_hub.service import Hub
from cloud_hub.ui import PUBLIC_PATHS, STATIC_PREFIX
from shared.messages import AnomalyEvent, ModelRef, TelemetryBatch
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY, hub_settings
from tests.cloud_hub.helpers import enroll_devices, stand_in_training, tiny_artifact, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]
PUBLIC, READ, ADMIN = "public", "read", "admin"
KINDS = ("none", "read", "admin", "revoked")
EPOCH = "00000000feedbeef"


@dataclass
class World:
    hub: Hub
    server: ServerHandle
    sessions: dict[str, httpx.Client]  # kind -> a client holding that kind of session
    csrf: dict[str, str]
    model: tuple[str, int]
    device: str
    counter: int = 0

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.server.base_url}/api/v1{path}",
                                 headers={"X-API-Key": ADMIN_KEY}, timeout=30, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def incident(self) -> int:
        self.counter += 1
        device = f"ui-auth-{self.counter}"
        with Session(self.hub.engine) as session:
            store_batch(session, IngestBatch(anomalies=[AnomalyEvent(
                device_id=device, epoch=EPOCH, seq=0, ts=(1.0, 2.0), score=3.0, threshold=1.0,
                model=ModelRef(name=self.model[0], version=self.model[1]), channels=["a"],
                detected_at=2.0)]))
        self.hub.incidents.wake()
        found = wait_for(lambda: self.api("GET", "/incidents", params={"device_id": device}),
                         timeout=20, what=f"an incident of {device}")
        return int(found[0]["id"])

    def rollout(self) -> int:
        self.counter += 1
        device = f"ui-auth-rollout-{self.counter}"
        enroll_devices(self.hub, (device,))  # a rollout targets enrolled devices only
        with Session(self.hub.engine) as session:
            store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
                device_id=device, epoch=EPOCH, seq=0, channels=["a", "b"], ts=[1.0],
                values=[[1.0, 2.0]])]))
        body = {"model": {"name": self.model[0], "version": self.model[1]},
                "target": {"devices": [device]},
                "policy": {"min_observation_s": 3600, "stage_timeout_s": 3600}}
        rollout_id = int(self.api("POST", "/rollouts", json=body)["id"])
        return rollout_id

    def rule(self) -> int:
        self.counter += 1
        rule = self.api("POST", "/webhooks", json={"name": f"r{self.counter}",
                                                   "url": "http://127.0.0.1:9/x"})
        return int(rule["id"])


@dataclass(frozen=True)
class Call:
    params: Callable[[World], dict[str, Any]] = lambda w: {}
    form: Callable[[World], dict[str, str]] = lambda w: {}
    query: dict[str, str] | None = None


def _incident(w: World) -> dict[str, Any]:
    return {"incident_id": w.incident()}


def _rollout_then(action: str | None) -> Callable[[World], dict[str, Any]]:
    def make(w: World) -> dict[str, Any]:
        rollout_id = w.rollout()
        if action:
            w.api("POST", f"/rollouts/{rollout_id}/{action}")
        return {"rollout_id": rollout_id, "action": {"resume": "resume"}.get(
            action or "", "pause")}
    return make


def _rollout_form(w: World) -> dict[str, str]:
    w.counter += 1
    device = f"ui-auth-target-{w.counter}"
    enroll_devices(w.hub, (device,))  # a rollout targets enrolled devices only
    with Session(w.hub.engine) as session:
        store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
            device_id=device, epoch=EPOCH, seq=0, channels=["a", "b"], ts=[1.0],
            values=[[1.0, 2.0]])]))
    return {"model": f"{w.model[0]}:{w.model[1]}", "devices": device,
            "min_observation_s": "3600"}


# Console routes anyone may call: the login form (and the static assets, a mount: below).
PUBLIC_ROUTES: dict[tuple[str, str], Call] = {
    ("GET", "/ui/login"): Call(),
    ("GET", "/ui"): Call(),  # a redirect to the fleet, which then asks for a session
}
# POST /ui/login is public too; it is tested on its own (it needs its login form's token).
SPECIAL = {("POST", "/ui/login"), ("POST", "/ui/logout")}

SCOPED_ROUTES: dict[tuple[str, str], tuple[str, Call]] = {
    ("GET", "/ui/fleet"): (READ, Call()),
    ("GET", "/ui/fleet/rows"): (READ, Call()),
    ("GET", "/ui/devices/{device_id}"): (READ, Call(lambda w: {"device_id": w.device})),
    ("GET", "/ui/devices/{device_id}/panel"): (READ, Call(lambda w: {"device_id": w.device})),
    ("GET", "/ui/devices/{device_id}/chart.json"): (READ, Call(
        lambda w: {"device_id": w.device})),
    ("GET", "/ui/inbox"): (READ, Call()),
    ("GET", "/ui/inbox/rows"): (READ, Call()),
    ("GET", "/ui/incidents/{incident_id}"): (READ, Call(_incident)),
    ("GET", "/ui/incidents/{incident_id}/panel"): (READ, Call(_incident)),
    ("GET", "/ui/incidents/{incident_id}/chart.json"): (READ, Call(_incident)),
    ("POST", "/ui/incidents/{incident_id}/acknowledge"): (ADMIN, Call(
        _incident, lambda w: {"note": "seen"})),
    ("POST", "/ui/incidents/{incident_id}/resolve"): (ADMIN, Call(_incident)),
    ("GET", "/ui/models"): (READ, Call()),
    ("GET", "/ui/models/{name}/{version}"): (READ, Call(
        lambda w: {"name": w.model[0], "version": w.model[1]})),
    ("GET", "/ui/rollouts"): (READ, Call()),
    ("POST", "/ui/rollouts"): (ADMIN, Call(form=_rollout_form)),
    ("GET", "/ui/rollouts/{rollout_id}"): (READ, Call(lambda w: {"rollout_id": w.rollout()})),
    ("GET", "/ui/rollouts/{rollout_id}/body"): (READ, Call(
        lambda w: {"rollout_id": w.rollout()})),
    ("POST", "/ui/rollouts/{rollout_id}/{action}"): (ADMIN, Call(_rollout_then(None))),
    ("GET", "/ui/notifications"): (READ, Call()),
    ("GET", "/ui/hubs"): (READ, Call()),
    ("GET", "/ui/hubs/rows"): (READ, Call()),
    ("POST", "/ui/webhooks"): (ADMIN, Call(form=lambda w: {
        "name": "ui-hook", "url": "http://127.0.0.1:9/hook"})),
    ("POST", "/ui/webhooks/{rule_id}/{action}"): (ADMIN, Call(
        lambda w: {"rule_id": w.rule(), "action": "disable"})),
    ("GET", "/ui/nav-counts"): (READ, Call()),
    ("GET", "/ui/events"): (READ, Call()),
}


def _ui_routes() -> list[tuple[str, str]]:
    """(method, path) of every console route of the hub's application (HEAD left out)."""
    with tempfile.TemporaryDirectory() as folder:
        hub = Hub(Settings(data_dir=Path(folder)))
        try:
            app = create_app(hub)
            found = {(method, context.path) for context in iter_route_contexts(app.routes)
                     for method in (getattr(context.original_route, "methods", None) or ())
                     if method != "HEAD" and context.path.startswith("/ui")}
        finally:
            hub.engine.dispose()
    return sorted(found, key=lambda r: (r[1], r[0]))


ROUTES = _ui_routes()
CHECKED = [r for r in ROUTES if r not in SPECIAL]


def _login(base: str, key: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base, timeout=30)
    page = client.get("/ui/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert token is not None
    answer = client.post("/ui/login", data={"login_csrf": token.group(1), "api_key": key})
    assert answer.status_code == 303, answer.text
    fleet = client.get("/ui/fleet")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', fleet.text)
    assert csrf is not None
    return client, csrf.group(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    broker = Broker()
    broker.start()
    hub = Hub(hub_settings(broker, tmp_path_factory.mktemp("hub"), incident_tick_s=0.1),
              run_training=stand_in_training())
    enroll_devices(hub, ("ui-dev",))
    hub.start()
    server = serve_in_thread(hub)
    try:
        base = server.base_url
        keys = {}
        for kind, scope in (("read", "read"), ("revoked", "admin")):
            created = httpx.post(f"{base}/api/v1/api-keys", json={"name": f"ui-{kind}",
                                                                   "scope": scope},
                                 headers={"X-API-Key": ADMIN_KEY}, timeout=30).json()
            keys[kind] = created
        sessions, csrf = {"none": httpx.Client(base_url=base, timeout=30)}, {"none": ""}
        sessions["admin"], csrf["admin"] = _login(base, ADMIN_KEY)
        for kind in ("read", "revoked"):
            sessions[kind], csrf[kind] = _login(base, keys[kind]["key"])
        httpx.delete(f"{base}/api/v1/api-keys/{keys['revoked']['id']}",
                     headers={"X-API-Key": ADMIN_KEY}, timeout=30)
        model = hub.register(tiny_artifact(), name="ui-ae")
        with Session(hub.engine) as session:
            publish_model(session, name=model[0], version=model[1], releases=hub.releases)
            store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
                device_id="ui-dev", epoch=EPOCH, seq=0, channels=["a", "b"],
                ts=[time.time()], values=[[1.0, 2.0]])]))
        yield World(hub, server, sessions, csrf, model, "ui-dev")
        for client in sessions.values():
            client.close()
    finally:
        server.stop()
        broker.close()


def test_the_console_table_names_only_routes_that_exist() -> None:
    stale = (set(PUBLIC_ROUTES) | set(SCOPED_ROUTES) | SPECIAL) - set(ROUTES)
    assert not stale, sorted(stale)
    assert f"{STATIC_PREFIX}" in PUBLIC_PATHS and "/ui/login" in PUBLIC_PATHS


def _path(path: str, params: dict[str, Any]) -> str:
    names = [n for _, n, _, _ in string.Formatter().parse(path) if n]
    filler = {n: params.get(n, "pause" if n == "action" else 1) for n in names}
    return path.format(**filler)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("method", "path"), CHECKED, ids=[f"{m} {p}" for m, p in CHECKED])
def test_console_route_answers_each_session_as_its_scope_says(
    world: World, method: str, path: str, kind: str
) -> None:
    if (method, path) in PUBLIC_ROUTES:
        scope, call = PUBLIC, PUBLIC_ROUTES[(method, path)]
    elif (method, path) in SCOPED_ROUTES:
        scope, call = SCOPED_ROUTES[(method, path)]
    else:
        pytest.fail(f"{method} {path} is not in the console's auth table in {__file__}")
    allowed = scope == PUBLIC or kind == "admin" or (kind == "read" and scope == READ)
    params = call.params(world) if allowed else {}
    form = {**(call.form(world) if allowed else {}), "csrf_token": world.csrf[kind]}
    client = world.sessions[kind]
    url = _path(path, params)
    if path == "/ui/events":  # a stream: the answer's status is all we need
        with client.stream("GET", url, params={"t": ""}) as response:
            status = response.status_code
    elif method == "GET":
        status = client.get(url, params=call.query).status_code
    else:
        status = client.post(url, data=form).status_code
    if allowed:
        assert status in (200, 303), (kind, status)
    elif kind in ("none", "revoked"):
        assert status == 401, (kind, status)
    else:
        assert status == 403, (kind, status)


def test_actions_refuse_a_missing_or_wrong_csrf_token(world: World) -> None:
    admin = world.sessions["admin"]
    incident = world.incident()
    for form in ({"note": "x"}, {"note": "x", "csrf_token": "forged"}):
        answer = admin.post(f"/ui/incidents/{incident}/acknowledge", data=form)
        assert answer.status_code == 403 and "CSRF" in answer.text
    cross_site = admin.post(f"/ui/incidents/{incident}/acknowledge",
                            data={"csrf_token": world.csrf["admin"]},
                            headers={"Origin": "https://evil.example"})
    assert cross_site.status_code == 403 and "cross-site" in cross_site.text


def test_login_logout_and_what_a_browser_without_a_session_sees(world: World) -> None:
    base = world.server.base_url
    with httpx.Client(base_url=base, timeout=30) as browser:
        page = browser.get("/ui/inbox", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/ui/inbox"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert browser.post("/ui/login", data={"api_key": ADMIN_KEY}).status_code == 403
        form = browser.get("/ui/login")
        token = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
        assert token is not None
        wrong = browser.post("/ui/login", data={"login_csrf": token.group(1),
                                                "api_key": "el_wrong"})
        assert wrong.status_code == 401 and "Unknown or revoked" in wrong.text
        token = re.search(r'name="login_csrf" value="([^"]+)"', wrong.text)  # a new form
        assert token is not None
        ok = browser.post("/ui/login", data={"login_csrf": token.group(1),
                                             "api_key": ADMIN_KEY, "next": "https://evil/"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/fleet"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/ui/fleet").text)
        assert csrf is not None
        assert browser.post("/ui/logout", data={"csrf_token": csrf.group(1)}).status_code == 303
        assert browser.get("/ui/fleet").status_code == 401
    for asset in ("/ui/static/console.js", "/ui/static/vendor/htmx-2.0.11.min.js",
                  "/ui/static/vendor/uPlot-1.6.32.iife.min.js", "/ui/static/console.css"):
        answer = httpx.get(base + asset, timeout=30)
        assert answer.status_code == 200 and "content-security-policy" in answer.headers
