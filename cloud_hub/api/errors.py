"""Error answers in the OpenAPI schema: one body (``{"detail": …}``) for every 4xx/5xx.

Routes declare the errors they raise themselves (``responses=errors(404, 409)``). The errors
every route of a kind can give are added to the schema here: 401 (and 403 for admin routes)
wherever an API key is needed, 413 wherever a body is read (the body limit runs before the
route). Clients and Schemathesis then know every status the hub may answer with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, Field

from cloud_hub.api.deps import require_admin, require_read

__all__ = ["ErrorBody", "document_errors", "errors"]

_DESCRIPTIONS = {
    400: "the request is malformed (e.g. its Content-Length)",
    401: "no API key, or an unknown or revoked one (header X-API-Key, or Authorization: "
         "Bearer KEY)",
    403: "the API key's scope does not allow this call",
    404: "what the path names does not exist",
    409: "the call does not fit the current state; `detail` says why",
    413: "the request body is larger than the hub accepts (EDGELOOP_MAX_REQUEST_BYTES)",
    503: "the MQTT broker did not take the message in time; try again",
}


class ErrorBody(BaseModel):
    """Every error answer: ``detail`` is a message, or a list of problems naming the field."""

    detail: str | list[Any] | dict[str, Any] = Field(
        description="what was wrong: text, or [{loc, msg, type}] for invalid input")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the errors a route raises itself."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _implied(route: APIRoute) -> list[int]:
    """The errors a route can answer with besides its own: key checks and the body limit."""
    calls = set(_calls(route.dependant))
    codes = []
    if require_admin in calls:
        codes += [401, 403]
    elif require_read in calls:
        codes += [401]
    if route.body_field is not None or "requestBody" in (route.openapi_extra or {}):
        codes += [400, 413]
    return codes


def document_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` list the implied errors of every route, with the error body."""

    def openapi() -> dict[str, Any]:
        schema = FastAPI.openapi(app)  # FastAPI's own, cached; the additions are idempotent
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("ErrorBody", ErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}"))
        for context in iter_route_contexts(app.routes):
            route = context.original_route
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            for method in route.methods or ():
                operation = schema["paths"].get(context.path, {}).get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                for code in _implied(route):
                    responses.setdefault(str(code), {
                        "description": _DESCRIPTIONS[code],
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                    })
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
