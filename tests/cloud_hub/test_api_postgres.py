"""Every route of the REST API on a hub whose database is PostgreSQL, with the call that the
auth table (test_api_auth.py) makes succeed on SQLite. PostgreSQL is the database of a hub
that scales out, and it is stricter about SQL than SQLite (the console's fleet counts failed
on it with a GROUP BY SQLite took); most API tests run on SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cloud_hub.api_support import World, started_world
from tests.cloud_hub.test_api_auth import PUBLIC_ROUTES, SCOPED_ROUTES
from tests.pg import made_pg_database

pytestmark = [pytest.mark.hub, pytest.mark.postgres]
ROUTES = sorted(set(PUBLIC_ROUTES) | set(SCOPED_ROUTES))


@pytest.fixture(scope="module")
def pg_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with made_pg_database() as url, \
            started_world(tmp_path_factory.mktemp("hub"), database_url=url) as w:
        yield w


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_route_succeeds_on_postgresql(pg_world: World, method: str, path: str) -> None:
    call = PUBLIC_ROUTES.get((method, path)) or SCOPED_ROUTES[(method, path)][1]
    params = call.params(pg_world)  # first, as the auth table does: a body may need it
    body = call.json_for(pg_world) if call.json_for is not None else call.json
    response = pg_world.http.request(method, path.format(**params),
                                     params=call.query, json=body, content=call.content,
                                     headers={"X-API-Key": pg_world.keys.admin})
    assert 200 <= response.status_code < 300, (response.status_code, response.text[:1000])
