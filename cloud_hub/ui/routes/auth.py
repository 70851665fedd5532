"""Logging in with an API key (which becomes a session cookie) and out."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud_hub.api.deps import HubDep, SessionDep
from cloud_hub.ui.render import templates
from cloud_hub.ui.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    CsrfUser,
    FormData,
    end_session,
    form_data,
    same_origin,
    start_session,
)

router = APIRouter(prefix="/ui", include_in_schema=False)
FormDep = Annotated[FormData, Depends(form_data)]


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never another site (no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//") \
            and "\\" not in target and "://" not in target:
        return target
    return "/ui/fleet"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(request: Request, next_path: str, error: str | None = None,
                status_code: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(request, "login.html", {
        "login_csrf": token, "next": _safe_next(next_path), "error": error, "viewer": None,
        "csrf": ""}, status_code=status_code)
    response.set_cookie(LOGIN_COOKIE, token, max_age=1800, path="/ui/login", httponly=True,
                        samesite="strict", secure=_secure(request))
    return response


@router.get("", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/ui/fleet", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request,
               next_path: Annotated[str | None, Query(alias="next", max_length=500)] = None
               ) -> HTMLResponse:
    return _login_page(request, next_path or "")


@router.post("/login", response_model=None)
def login(request: Request, form: FormDep, session: SessionDep, hub: HubDep
          ) -> Response:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = form.get("login_csrf", "")
    next_path = form.get("next", "")
    if not cookie or not same_origin(request) or not hmac.compare_digest(cookie.encode(),
                                                                        sent.encode()):
        return _login_page(request, next_path, "The login form expired; please try again.",
                           status_code=403)
    started = start_session(session, form.get("api_key", "").strip(),
                            hub.settings.ui_session_ttl_s)
    if started is None:
        return _login_page(request, next_path, "Unknown or revoked API key.", status_code=401)
    token, _viewer = started
    response = RedirectResponse(_safe_next(next_path), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(hub.settings.ui_session_ttl_s),
                        path="/ui", httponly=True, samesite="strict", secure=_secure(request))
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/logout", response_class=RedirectResponse)
def logout(request: Request, _viewer: CsrfUser, session: SessionDep) -> RedirectResponse:
    end_session(session, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response
