"""Schemathesis against the hub's own OpenAPI schema: no 5xx anywhere, every answer matches
the status codes, content types, headers and bodies the schema declares.

A started hub (real mosquitto, real SQLite) is served by uvicorn on a free port; generated
requests go with a read key and an admin key in turn. Each operation gets the boundary values
of its parameters and ``EXAMPLES`` generated cases (deterministic under the ``ci`` profile),
which keeps the run near a minute and a half on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cloud_hub.api.main import create_app
from cloud_hub.service import Hub
from simulator.broker import Broker
from tests.cloud_hub.api_support import Keys, make_keys, openapi_of_a_fresh_hub, serving
from tests.cloud_hub.conftest import ADMIN_KEY, hub_settings

pytestmark = [pytest.mark.integration, pytest.mark.hub, pytest.mark.serial]
EXAMPLES = 10
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def _no_training(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("the schemathesis run does not train models")


class Target:
    def __init__(self, url: str, keys: Keys) -> None:
        self.url, self.keys = url, keys
        self.calls = 0
        self.operations: set[str] = set()

    def read_key_alive(self) -> str:
        """A read key: a generated DELETE /api-keys/{id} may have revoked the last one."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            if http.get("/api/v1/metrics",
                        headers={"X-API-Key": self.keys.read}).status_code == 401:
                made = http.post("/api/v1/api-keys", json={"name": "st-read", "scope": "read"},
                                 headers={"X-API-Key": self.keys.admin})
                self.keys = Keys(admin=self.keys.admin, read=made.json()["key"],
                                 revoked=self.keys.revoked)
        return self.keys.read


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Target]:
    broker = Broker()
    broker.start()
    hub = Hub(hub_settings(broker, Path(tmp_path_factory.mktemp("hub"))),
              run_training=_no_training)
    hub.start()
    try:
        with serving(create_app(hub)) as url, httpx.Client(base_url=url, timeout=30) as http:
            found = Target(url, make_keys(http, ADMIN_KEY))
            yield found
        # A run that reached no operation must not pass: on an xdist worker schemathesis'
        # parametrized test ran nothing and passed in 0.06 s (the Makefile runs this file in
        # one process). Checked only when the schema test ran in full, not under -k.
        selected = [i for i in request.session.items
                    if i.name.startswith("test_every_operation_answers_as_its_schema_says")]
        expected = _operations()
        if selected and found.calls == 0:
            pytest.fail("schemathesis' test ran no operation (on an xdist worker?)")
        if len(selected) == len(expected) and found.operations != expected:
            pytest.fail(f"schemathesis exercised {len(found.operations)} of {len(expected)} "
                        f"operations; missing: {sorted(expected - found.operations)}")
    finally:
        hub.stop()
        broker.close()


# The schema the application serves, read at collection from an application that is not
# started (schemathesis' lazy fixture loader does not work with this pytest); the calls go
# to the started one.
# The valid boundary values of every parameter (the coverage phase), then EXAMPLES generated
# cases, valid and invalid (the fuzzing phase): about 45 s. The invalid boundary values too
# double that; a wider run is HYPOTHESIS_PROFILE=explore (random, 2,000 fuzzing examples).
_CONFIG = schemathesis.Config.from_dict({"phases": {"coverage": {
    "unexpected-methods": [], "generation": {"mode": "positive"}}}})
schema = schemathesis.openapi.from_dict(openapi_of_a_fresh_hub(), config=_CONFIG)


@schema.parametrize()
@settings(max_examples=EXAMPLES if settings().max_examples <= 100 else settings().max_examples,
          deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation_answers_as_its_schema_says(case: Any, target: Target) -> None:
    # Read and admin key in turn (both on every operation, each case once, to stay near a
    # minute): a read key gets 403 from admin routes, and that answer must match the schema too.
    target.calls += 1
    target.operations.add(f"{case.method.upper()} {case.path}")
    key = target.keys.admin if target.calls % 2 else target.read_key_alive()
    case.call_and_validate(base_url=target.url, headers={"X-API-Key": key}, checks=CHECKS)


def _operations() -> set[str]:
    return {f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items()
            for method in item if method in ("get", "put", "post", "delete", "patch")}


def _int_path_params() -> list[tuple[str, str, str]]:
    found = []
    for path, item in openapi_of_a_fresh_hub()["paths"].items():
        for method, operation in item.items():
            for param in operation.get("parameters", []):
                if param["in"] == "path" and param["schema"].get("type") == "integer":
                    found.append((method.upper(), path, param["name"]))
    return found


@pytest.mark.parametrize(("method", "path", "name"), _int_path_params())
def test_an_id_past_the_database_integers_is_422_not_500(
    target: Target, method: str, path: str, name: str
) -> None:
    """Found by Schemathesis: a 20-digit id reached SQLite and came back as a 500."""
    url = path.replace("{" + name + "}", str(2**64)).replace("{name}", "m").replace(
        "{device_id}", "d")
    for other in ("version", "key_id", "job_id", "rollout_id", "incident_id", "rule_id"):
        url = url.replace("{" + other + "}", "1")
    response = httpx.request(method, target.url + url, headers={"X-API-Key": target.keys.admin},
                             json={} if method in ("POST", "PATCH", "PUT") else None, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["path", name]
