"""The request body limit: refused with 413 before parsing and before the API key check."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cloud_hub.api.body_limit import BodySizeLimit
from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.service import Hub
from tests.cloud_hub.conftest import ADMIN_KEY

pytestmark = [pytest.mark.integration, pytest.mark.hub]
ADMIN = {"X-API-Key": ADMIN_KEY}
LIMIT = 4096
UPLOAD_LIMIT = 64 * 1024


@pytest.fixture
def server(broker: Any, tmp_path: Any) -> Iterator[ServerHandle]:
    from tests.cloud_hub.conftest import hub_settings
    from tests.cloud_hub.helpers import stand_in_training

    settings = hub_settings(broker, tmp_path / "hub", max_request_bytes=LIMIT,
                            max_upload_bytes=UPLOAD_LIMIT)
    handle = serve_in_thread(Hub(settings, run_training=stand_in_training()))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        part = min(size, total - sent)
        sent += part
        yield b"x" * part


def test_oversized_body_without_a_key_is_413_not_401(http: httpx.Client) -> None:
    response = http.post("/api/v1/training-jobs", content=b"{" * (LIMIT + 1),
                         headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert f"limit of {LIMIT} bytes" in detail and "/api/v1/training-jobs" in detail


def test_oversized_body_with_an_admin_key_is_413(http: httpx.Client) -> None:
    body = {"name": "m", "devices": ["d" * 60] * 200}  # valid JSON, too big
    response = http.post("/api/v1/training-jobs", json=body, headers=ADMIN)
    assert response.status_code == 413, response.text


def test_chunked_body_without_content_length_is_counted_and_refused(
    http: httpx.Client,
) -> None:
    request = http.build_request("POST", "/api/v1/training-jobs", content=_chunks(LIMIT * 4),
                                 headers={"content-type": "application/json"})
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = http.send(request)
    assert response.status_code == 413, response.text
    assert f"more than {LIMIT} bytes" in response.json()["detail"]


def test_body_under_the_limit_reaches_the_route(http: httpx.Client) -> None:
    # Chunked too, but small: the route parses it and answers with its own 422.
    request = http.build_request("POST", "/api/v1/training-jobs",
                                 content=iter([b'{"name": ', b'"bad name!"}']),
                                 headers={"content-type": "application/json", **ADMIN})
    response = http.send(request)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "name"]
    assert http.post("/api/v1/training-jobs", content=b"{}",
                     headers={"content-type": "application/json"}).status_code == 401


def test_the_csv_upload_has_its_own_larger_limit(http: httpx.Client) -> None:
    row = b"1.0,2.0\n"
    fits = b"a,b\n" + row * ((UPLOAD_LIMIT - 100) // len(row))
    assert LIMIT < len(fits) <= UPLOAD_LIMIT
    response = http.post("/api/v1/training-jobs/csv", params={"name": "csv-m"}, content=fits,
                         headers={"content-type": "text/csv", **ADMIN})
    assert response.status_code == 202, response.text
    too_big = b"a,b\n" + row * (UPLOAD_LIMIT // len(row) + 1)
    response = http.post("/api/v1/training-jobs/csv", params={"name": "csv-m"},
                         content=too_big, headers={"content-type": "text/csv", **ADMIN})
    assert response.status_code == 413
    assert f"limit of {UPLOAD_LIMIT} bytes" in response.json()["detail"]


def test_a_malformed_content_length_is_400() -> None:
    scope = _scope("POST", "/x", [(b"content-length", b"12abc")])
    sent, called = _run_middleware(scope, [b"{}"])
    assert not called and sent[0]["status"] == 400


# -- the middleware alone, with an app that records whether it was ever called --------------

def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": headers,
            "query_string": b""}


def _run_middleware(scope: dict[str, Any], parts: list[bytes],
                    limit: int = 100) -> tuple[list[dict[str, Any]], list[bytes]]:
    called: list[bytes] = []
    sent: list[dict[str, Any]] = []
    received = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        called.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received < len(parts):
            received += 1
            return {"type": "http.request", "body": parts[received - 1],
                    "more_body": received < len(parts)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(BodySizeLimit(app, default_limit=limit)(scope, receive, send))
    return sent, called


def test_middleware_refuses_a_declared_length_without_reading_or_calling_the_app() -> None:
    sent, called = _run_middleware(_scope("POST", "/x", [(b"content-length", b"101")]),
                                   [b"y" * 101])
    assert not called
    assert sent[0]["status"] == 413


def test_middleware_stops_reading_a_stream_once_it_passes_the_limit() -> None:
    parts = [b"a" * 60, b"b" * 60, b"c" * 60]
    sent, called = _run_middleware(_scope("POST", "/x", []), parts)
    assert not called and sent[0]["status"] == 413


def test_middleware_hands_a_fitting_stream_to_the_app_in_one_piece() -> None:
    sent, called = _run_middleware(_scope("POST", "/x", []), [b"a" * 50, b"b" * 50])
    assert called == [b"a" * 50 + b"b" * 50]
    assert sent[0]["status"] == 200
