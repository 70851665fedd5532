"""A thin httpx client of the hub's REST API; the transport can be swapped in tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

# The header list routes set when another page follows (cloud_hub.api.paging); not imported
# from there so that the CLI client does not need FastAPI.
NEXT_CURSOR_HEADER = "X-Next-Cursor"

__all__ = ["ApiError", "HubClient", "HubUnreachable"]


class ApiError(RuntimeError):
    """The hub answered with an error status; the message carries its detail."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {_readable(detail)}" if status else str(detail))
        self.status = status  # 0: no answer at all (see HubUnreachable)
        self.detail = detail


def _readable(detail: Any) -> str:
    """A JSON error detail as a line: its message, or each validation error with its place."""
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        return str(detail["message"])
    if isinstance(detail, list) and all(isinstance(e, dict) and "msg" in e for e in detail):
        return "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc') or [])}: {e['msg']}".lstrip(": ")
            for e in detail)
    return str(detail)


class HubUnreachable(ApiError):
    """No HTTP answer: the hub is not running there, or the URL is wrong."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, f"cannot reach the hub at {url} ({reason})")
        self.url = url


class HubClient:
    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=base_url.rstrip("/") + "/api/v1", headers=headers,
                                  timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HubUnreachable(self.url, str(exc) or type(exc).__name__) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON, its bytes if it is not JSON, or None if it has no body (a
        delete's 204, which FastAPI still labels JSON)."""
        response = self._send(method, path, **kwargs)
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def pages(self, path: str, **params: Any) -> Iterator[Any]:
        """Each page of a list route, following ``X-Next-Cursor`` to the last one."""
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            response = self._send("GET", path, params=query)
            yield response.json()
            cursor = response.headers.get(NEXT_CURSOR_HEADER)
            if not cursor:
                return
            query["cursor"] = cursor

    def get_all(self, path: str, **params: Any) -> list[Any]:
        """Every item of a list route, page after page (``limit`` is the page size)."""
        return [item for page in self.pages(path, **params) for item in page]

    def get_telemetry(self, device_id: str, **params: Any) -> dict[str, Any]:
        """``GET /telemetry`` of one device, every page joined into one body."""
        joined: dict[str, Any] | None = None
        for page in self.pages("/telemetry", device_id=device_id, **params):
            if joined is None:
                joined = page
            else:
                joined["ts"] += page["ts"]
                joined["values"] += page["values"]
        assert joined is not None
        return joined

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                 if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
