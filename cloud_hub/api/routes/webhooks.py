"""Webhook rules for incident notifications, and their deliveries."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlmodel import col, select

from cloud_hub.api.deps import AdminKey, IdPath, IdQuery, ReadKey, SessionDep
from cloud_hub.api.errors import errors
from cloud_hub.api.incident_schemas import (
    DeliveryPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
    WebhookUpdate,
)
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.db.ops_tables import WebhookRule
from cloud_hub.db.paging import keyset_page
from cloud_hub.incidents.queries import deliveries_page
from cloud_hub.notify import admin

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
RulePath = IdPath


@router.get("", response_model=list[WebhookPublic], responses=PAGE_HEADERS)
def rules(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: CursorQuery = None,
) -> list[dict[str, Any]]:
    """Rules by id; more pages through `X-Next-Cursor`."""
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, select(WebhookRule), order=[col(WebhookRule.id)], limit=limit, after=after))
    return [admin.rule_view(session, r) for r in rows]


@router.post("", response_model=WebhookCreated, status_code=status.HTTP_201_CREATED)
def create(body: WebhookCreate, session: SessionDep, _key: AdminKey) -> dict[str, Any]:
    """A rule: incidents of devices in `group` / with `tag`, reaching `min_score`, of
    `fault_class` (each optional) are sent to `url`, signed with the returned `secret`."""
    try:
        rule = admin.create_rule(session, **body.model_dump())
    except ValueError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "url"], "msg": str(exc), "type": "value_error"}],
        ) from None
    return admin.rule_view(session, rule, with_secret=True)


@router.get("/deliveries", response_model=list[DeliveryPublic], responses=PAGE_HEADERS)
def deliveries(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    delivery_status: Annotated[str | None, Query(alias="status",
                                                 pattern="^(pending|delivered|failed)$")] = None,
    rule_id: IdQuery = None,
    incident_id: IdQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: CursorQuery = None,
) -> list[Any]:
    """Newest first, with attempts and the last error; more pages through `X-Next-Cursor`."""
    return paged(request, response, cursor, lambda after: deliveries_page(
        session, status=delivery_status, rule_id=rule_id, incident_id=incident_id, limit=limit,
        after=after))


def _rule(session: SessionDep, rule_id: int) -> None:
    try:
        admin.get_rule(session, rule_id)
    except admin.RuleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.patch("/{rule_id}", response_model=WebhookPublic, responses=errors(404))
def update(rule_id: RulePath, body: WebhookUpdate, session: SessionDep,
           _key: AdminKey) -> dict[str, Any]:
    _rule(session, rule_id)
    return admin.rule_view(session, admin.set_enabled(session, rule_id, body.enabled))


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404))
def remove(rule_id: RulePath, session: SessionDep, _key: AdminKey) -> None:
    """Delete the rule and its delivery history."""
    _rule(session, rule_id)
    admin.delete_rule(session, rule_id)
