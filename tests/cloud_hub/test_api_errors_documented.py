"""Every status a route can raise is in its OpenAPI operation.

Schemathesis finds an undocumented status only when its generated request happens to reach the
``raise``; this reads the code instead. For each route, the ``HTTPException(status.HTTP_…)``
raised by its endpoint and by the hub's own functions it calls (followed through the calls,
within ``cloud_hub.api``) must be among the operation's responses.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import status
from fastapi.routing import APIRoute, iter_route_contexts

from cloud_hub.api.main import create_app
from cloud_hub.core.config import Settings
from cloud_hub.service import Hub

pytestmark = [pytest.mark.hub]


def _status_code(node: ast.expr) -> int | None:
    """``status.HTTP_404_NOT_FOUND`` or ``404`` as a number."""
    if isinstance(node, ast.Attribute) and node.attr.startswith("HTTP_"):
        return int(getattr(status, node.attr))
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    return None


def _raised_codes(func: Callable[..., Any], seen: set[Callable[..., Any]]) -> Iterator[int]:
    """Codes of the HTTPExceptions ``func`` builds, and those of the api functions it calls."""
    if func in seen or not getattr(func, "__module__", "").startswith("cloud_hub.api"):
        return
    seen.add(func)
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name == "HTTPException":
            code = _status_code(node.args[0]) if node.args else None
            assert code is not None, f"{func.__qualname__}: HTTPException with a computed code"
            yield code
        elif name is not None and inspect.isfunction(func.__globals__.get(name)):
            yield from _raised_codes(func.__globals__[name], seen)


@pytest.fixture(scope="module")
def app_and_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    hub = Hub(Settings(data_dir=Path(tmp_path_factory.mktemp("hub"))))
    try:
        app = create_app(hub)
        yield app, app.openapi()
    finally:
        hub.engine.dispose()


def test_every_status_a_route_raises_is_in_its_schema(app_and_schema: tuple[Any, Any]) -> None:
    app, schema = app_and_schema
    gaps, checked = [], 0
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        raised = set(_raised_codes(route.endpoint, set()))
        for method in route.methods or ():
            declared = set(schema["paths"][context.path][method.lower()]["responses"])
            checked += 1
            gaps += [f"{method} {context.path}: {code}" for code in sorted(raised)
                     if str(code) not in declared]
    assert checked > 50, checked
    assert not gaps, "raised but not in the schema:\n" + "\n".join(gaps)
