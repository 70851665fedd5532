"""Who is looking at the console, and what they may do.

- Login: an API key, posted once, becomes a server-side session (``ui_sessions``); the browser
  holds only a random token in an HttpOnly, SameSite=Strict cookie scoped to ``/ui``. The key's
  scope is read on every request, so revoking the key ends its sessions at once.
- Read keys see every page; only admin keys act (:data:`AdminUser`).
- CSRF: every action needs the session's token, as the ``csrf_token`` form field or the
  ``X-CSRF-Token`` header (htmx sends it from ``hx-headers``), compared in constant time; a
  cross-site ``Origin`` is refused as well. The login form has its own double-submit token.
- Every ``/ui`` response carries a strict Content-Security-Policy (no inline script or style).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, HTTPException, Request, status
from sqlmodel import Session, col, delete, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_hub.core.security import Scope as KeyScope
from cloud_hub.core.security import hash_api_key, scope_allows
from cloud_hub.db.ops_tables import UiSession
from cloud_hub.db.tables import ApiKey
from cloud_hub.service import Hub

__all__ = [
    "CSP", "LOGIN_COOKIE", "SESSION_COOKIE", "AdminUser", "CsrfUser", "FormData", "LoginRequired",
    "SecurityHeaders", "UiUser", "Viewer", "end_session", "form_data", "start_session",
]

UI_PREFIX = "/ui"
SESSION_COOKIE = "edgeloop_session"
LOGIN_COOKIE = "edgeloop_login"
CSRF_HEADER = "X-CSRF-Token"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
MAX_FORM_BYTES = 64 * 1024


class SecurityHeaders:
    """ASGI middleware: the security headers on every response under ``/ui``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(UI_PREFIX):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in _HEADERS if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)


class LoginRequired(Exception):
    """No valid session: pages redirect to the login page, fragments and actions get 401."""


@dataclass(frozen=True)
class Viewer:
    key_id: int
    name: str
    scope: str
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return scope_allows(self.scope, KeyScope.ADMIN)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, api_key: str, ttl_s: float) -> tuple[str, Viewer] | None:
    """A new session for a valid, unrevoked key: (cookie token, viewer); None otherwise."""
    record = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_api_key(api_key))).first()
    if record is None or record.revoked_at is not None or record.id is None:
        return None
    now = time.time()
    session.exec(delete(UiSession).where(col(UiSession.expires_at) < now))
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(UiSession(token_hash=_token_hash(token), api_key_id=record.id, csrf_token=csrf,
                          created_at=now, expires_at=now + ttl_s))
    session.commit()
    return token, Viewer(record.id, record.name, record.scope, csrf)


def end_session(session: Session, token: str | None) -> None:
    if token:
        session.exec(delete(UiSession).where(col(UiSession.token_hash) == _token_hash(token)))
        session.commit()


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def current_viewer(request: Request) -> Viewer:
    """The session's viewer, or LoginRequired."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise LoginRequired()
    with Session(_hub(request).engine) as session:
        row = session.exec(
            select(UiSession, ApiKey).join(ApiKey, col(ApiKey.id) == col(UiSession.api_key_id))
            .where(UiSession.token_hash == _token_hash(token))).first()
    if row is None:
        raise LoginRequired()
    ui_session, key = row
    if ui_session.expires_at < time.time() or key.revoked_at is not None or key.id is None:
        raise LoginRequired()
    return Viewer(key.id, key.name, key.scope, ui_session.csrf_token)


FormData = dict[str, str]


async def form_data(request: Request) -> FormData:
    """The urlencoded form of a POST (cached on the request; last value of a repeated field)."""
    cached: FormData | None = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"form of {len(body)} bytes exceeds {MAX_FORM_BYTES}")
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if body and kind != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            "console forms are application/x-www-form-urlencoded")
    try:
        form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                              max_num_fields=200))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unreadable form: {exc}") from None
    request.state.form = form
    return form


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def require_csrf(request: Request) -> Viewer:
    """A session whose request carries its CSRF token (header or form field), same-site."""
    viewer = current_viewer(request)
    if not same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")
    sent = request.headers.get(CSRF_HEADER) or (await form_data(request)).get("csrf_token", "")
    if not hmac.compare_digest(sent.encode(), viewer.csrf_token.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "missing or wrong CSRF token; reload the page and try again")
    return viewer


async def require_action(request: Request) -> Viewer:
    """An admin session, CSRF-checked: the only kind that may change anything."""
    viewer = await require_csrf(request)
    if not viewer.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"API key {viewer.name!r} has scope {viewer.scope!r}; "
                            "only an admin key can act")
    return viewer


UiUser = Annotated[Viewer, Depends(current_viewer)]
CsrfUser = Annotated[Viewer, Depends(require_csrf)]
AdminUser = Annotated[Viewer, Depends(require_action)]
