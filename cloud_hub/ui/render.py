"""Rendering console pages: one Jinja2 environment (autoescaped), filters, the page context."""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from cloud_hub.incidents.queries import count_by_state
from cloud_hub.ui.live import live_token
from cloud_hub.ui.security import Viewer

__all__ = ["page", "templates"]

TEMPLATES_DIR = Path(__file__).parent / "templates"


def utc(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def ago(epoch: float | None, now: float | None = None) -> str:
    if epoch is None:
        return "never"
    seconds = (time.time() if now is None else now) - epoch
    if seconds < 0:
        return "just now" if seconds > -5 else "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def micros(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} µs" if value >= 10 else f"{value:.1f} µs"


def size(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KB"
    return f"{value / 1024 / 1024:.1f} MB"


def ratio_class(score: float, threshold: float) -> str:
    """How far over its threshold a score is, as a CSS class."""
    if threshold <= 0:
        return "sev-high"
    r = score / threshold
    return "sev-high" if r >= 3 else "sev-mid" if r >= 1.5 else "sev-low"


def bar_width(score: float, threshold: float) -> int:
    """Width (0..100, in steps of 5: CSS classes, no inline style) of a score/threshold bar
    whose full length is 4 × the threshold."""
    if threshold <= 0:
        return 100
    return min(100, max(5, round(score / threshold / 4 * 20) * 5))


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.filters.update(utc=utc, iso=iso, ago=ago, duration=duration, num=num, size=size,
                            micros=micros)
templates.env.globals.update(ratio_class=ratio_class, bar_width=bar_width, urlencode=urlencode)


def page(request: Request, name: str, viewer: Viewer, session: Session, *,
         live_device: str | None = None, status_code: int = 200, **context: Any
         ) -> HTMLResponse:
    """A full page: the layout's context (viewer, CSRF token, live-update URL) and ``context``."""
    live = {"t": live_token(session, device=live_device)}
    if live_device is not None:
        live["device"] = live_device
    return templates.TemplateResponse(request, name, {
        "viewer": viewer, "csrf": viewer.csrf_token, "now": time.time(),
        "live_url": "/ui/events?" + urlencode(live), "nav": count_by_state(session),
        **context,
    }, status_code=status_code)


def fragment(request: Request, name: str, viewer: Viewer | None, **context: Any
             ) -> HTMLResponse:
    """A piece of a page that htmx swaps in (no layout)."""
    return templates.TemplateResponse(request, name, {
        "viewer": viewer, "csrf": viewer.csrf_token if viewer else "", "now": time.time(),
        **context,
    })
