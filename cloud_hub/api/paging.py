"""Pagination of list routes: ``limit`` (bounded) and an opaque ``cursor`` for the next page.

A list route answers with at most ``limit`` items in a stable order. When more may follow, the
response carries the cursor of the next page in the ``X-Next-Cursor`` header and as a
``Link: <…>; rel="next"`` URL; the client repeats the same request with ``cursor=…`` until no
cursor comes back. Cursors are keys of the last row (keyset pagination), so pages neither skip
nor repeat rows while new ones arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Query, Request, Response, status

from cloud_hub.db.paging import CursorError, Key, Page

__all__ = ["NEXT_CURSOR_HEADER", "PAGE_HEADERS", "CursorQuery", "bad_cursor", "decode_cursor",
           "encode_cursor", "paged", "set_next_page"]

T = TypeVar("T")
NEXT_CURSOR_HEADER = "X-Next-Cursor"

CursorQuery = Annotated[str | None, Query(
    max_length=4096, pattern=r"^[A-Za-z0-9_-]+$",
    description=f"from the `{NEXT_CURSOR_HEADER}` header of the previous page",
)]

# For `responses=` of a list route, so the OpenAPI schema documents the headers.
PAGE_HEADERS: dict[int | str, dict[str, Any]] = {200: {"headers": {
    NEXT_CURSOR_HEADER: {"description": "cursor of the next page; absent on the last page",
                         "schema": {"type": "string"}},
    "Link": {"description": 'the next page\'s URL, rel="next"', "schema": {"type": "string"}},
}}}


def encode_cursor(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def bad_cursor(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         [{"loc": ["query", "cursor"], "msg": message, "type": "value_error"}])


def decode_cursor(cursor: str | None) -> Any:
    """The value encoded by :func:`encode_cursor`; 422 naming ``cursor`` when it is not one."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise bad_cursor(f"not a cursor this hub issued: {exc}") from None


def set_next_page(request: Request, response: Response, next_value: Any) -> None:
    if next_value is None:
        return
    cursor = encode_cursor(next_value)
    response.headers[NEXT_CURSOR_HEADER] = cursor
    response.headers["Link"] = f'<{request.url.include_query_params(cursor=cursor)}>; rel="next"'


def paged(request: Request, response: Response, cursor: str | None,
          fetch: Callable[[Key | None], Page[T]]) -> list[T]:
    """Run ``fetch`` after the cursor's key; set the next page's headers; the page's rows."""
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, list):
        raise bad_cursor("not a cursor of this listing")
    try:
        page = fetch(after)
    except CursorError as exc:
        raise bad_cursor(str(exc)) from None
    set_next_page(request, response, page.next_key)
    return page.rows
