"""/docs works without internet: Swagger UI comes from the hub itself, and the page names no
other host."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from cloud_hub.api.docs import ASSETS
from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.service import Hub

pytestmark = [pytest.mark.integration, pytest.mark.hub]
_LINK = re.compile(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""")


@pytest.fixture
def web(hub: Hub) -> Iterator[httpx.Client]:
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            yield client
    finally:
        server.stop()


def test_docs_page_references_no_external_host_and_its_assets_are_served(
    web: httpx.Client,
) -> None:
    page = web.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "swagger-ui" in html
    links = _LINK.findall(html)
    assert links, html
    external = [u for u in links if re.match(r"^(https?:)?//", u)]
    assert external == [], external
    assert not re.search(r"https?://", html), "an absolute URL in the /docs page"
    assert "validatorUrl" in html and '"validatorUrl": null' in html
    for link in links:
        served = web.get(link)
        assert served.status_code == 200, link
    bundle = web.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith(("text/javascript",
                                                       "application/javascript"))
    assert len(bundle.content) > 1_000_000
    assert web.get("/openapi.json").json()["info"]["title"] == "edgeloop hub"
    assert web.get("/redoc").status_code == 404


def test_the_vendored_swagger_ui_keeps_its_licence() -> None:
    assert "Apache License" in (ASSETS / "LICENSE").read_text()
    assert (ASSETS / "NOTICE").exists() and (ASSETS / "swagger-ui-bundle.js.LICENSE.txt").exists()
    assert "swagger-ui-dist" in (ASSETS / "SOURCE.md").read_text()
