"""The operations console: server-rendered pages under ``/ui``, served by the hub itself.

Jinja2 templates, htmx and uPlot (vendored in ``static/vendor`` with their licences; nothing
is fetched from elsewhere), live updates over server-sent events, a session cookie made from an
API key, CSRF tokens on every action and a strict Content-Security-Policy. Routes stay thin:
they call the same functions as the REST API (incident actions, rollout actions, webhook rules),
so the console applies the same checks.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_hub.ui.render import templates
from cloud_hub.ui.routes import (
    auth,
    fleet,
    hubs,
    inbox,
    live,
    models,
    notifications,
    rollouts,
)
from cloud_hub.ui.security import LoginRequired, SecurityHeaders

__all__ = ["PUBLIC_PATHS", "STATIC_PREFIX", "UI_PREFIX", "mount_console"]

UI_PREFIX = "/ui"
STATIC_PREFIX = "/ui/static"
STATIC_DIR = Path(__file__).parent / "static"
# The only console paths served without a session: the login form and the static assets.
PUBLIC_PATHS = (f"{UI_PREFIX}/login", STATIC_PREFIX)


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _wants_page(request: Request) -> bool:
    """A browser navigating (not htmx, fetch or an event stream): it can follow a redirect."""
    return (request.method == "GET" and not _is_htmx(request)
            and "text/html" in request.headers.get("accept", ""))


async def _login_required(request: Request, _exc: Exception) -> Response:
    if _wants_page(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{UI_PREFIX}/login?next={_quote(target)}", status_code=303)
    response = JSONResponse({"detail": "login required: no valid console session"},
                            status_code=401)
    response.headers["HX-Redirect"] = f"{UI_PREFIX}/login"
    return response


def _quote(path: str) -> str:
    return quote(path, safe="/")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Console requests get an error page (or a text fragment for htmx); the API its JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith(UI_PREFIX + "/") or request.url.path.startswith(
            STATIC_PREFIX):
        return await http_exception_handler(request, exc)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if "text/html" not in request.headers.get("accept", "") or _is_htmx(request):
        return await http_exception_handler(request, exc)
    return templates.TemplateResponse(request, "error.html", {
        "status_code": exc.status_code, "detail": detail, "viewer": None, "csrf": ""},
        status_code=exc.status_code)


def mount_console(app: FastAPI) -> None:
    """Add the console's routes, static files, headers and error pages to the hub's app."""
    app.add_middleware(SecurityHeaders)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="ui-static")
    for module in (auth, fleet, inbox, models, rollouts, notifications, hubs, live):
        app.include_router(module.router)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
