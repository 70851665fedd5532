"""A request body size limit enforced before routing, parsing or the API key check.

A pure ASGI middleware: a ``Content-Length`` above the limit is refused at once; a body without
one (chunked) is counted as it streams in and refused as soon as it passes the limit, without
reading the rest. Only a body that fits is handed on to the application, which therefore never
parses (nor authenticates) an oversized request. Each path may have its own limit (the CSV
training upload needs more than a JSON body).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit"]


class BodySizeLimit:
    """Refuse request bodies larger than ``default_limit`` (or ``path_limits[path]``) with 413."""

    def __init__(self, app: ASGIApp, *, default_limit: int,
                 path_limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default_limit = default_limit
        self.path_limits = dict(path_limits or {})

    def limit_for(self, path: str) -> int:
        return self.path_limits.get(path.rstrip("/") or "/", self.default_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        where = f"{scope['method']} {scope['path']}"
        declared = _content_length(scope)
        if declared == -1:
            await _refuse(send, 400, "the Content-Length header is not a non-negative integer")
            return
        if declared is not None and declared > limit:
            await _refuse(send, 413, f"request body of {declared} bytes exceeds the limit of "
                                     f"{limit} bytes for {where}")
            return
        # Read the whole body first, counting: the app sees it only if it fits.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, f"request body of more than {limit} bytes exceeds "
                                         f"the limit of {limit} bytes for {where}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _content_length(scope: Scope) -> int | None:
    """The declared length, None when absent, -1 when it is not a valid number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
