"""Notifications: webhook rules (create, enable, disable, delete) and every delivery, with its
attempts and last error, so failures are seen."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from cloud_hub.api.deps import SessionDep
from cloud_hub.api.incident_schemas import WebhookCreate
from cloud_hub.incidents.queries import list_deliveries
from cloud_hub.notify import admin
from cloud_hub.ui.render import page
from cloud_hub.ui.security import AdminUser, FormData, UiUser, Viewer, form_data

router = APIRouter(prefix="/ui", include_in_schema=False)
RulePath = Annotated[int, Path(ge=1)]
FormDep = Annotated[FormData, Depends(form_data)]
PER_PAGE = 50


def _page(request: Request, viewer: Viewer, session: Session, *, status_filter: str | None,
          page_no: int, form: FormData | None = None, errors: list[str] | None = None,
          created: dict[str, object] | None = None, status_code: int = 200) -> HTMLResponse:
    rules = [admin.rule_view(session, r) for r in admin.list_rules(session)]
    deliveries = list_deliveries(session, status=status_filter, limit=PER_PAGE,
                                 offset=(page_no - 1) * PER_PAGE)
    return page(request, "notifications.html", viewer, session, section="notifications",
                rules=rules, deliveries=deliveries, status_filter=status_filter or "",
                page_no=page_no, form=form or {}, errors=errors or [], created=created,
                status_code=status_code)


@router.get("/notifications", response_class=HTMLResponse)
def notifications(request: Request, viewer: UiUser, session: SessionDep,
                  status_filter: Annotated[str | None, Query(
                      alias="status", pattern="^(pending|delivered|failed)$")] = None,
                  p: Annotated[int, Query(ge=1, le=100_000)] = 1) -> HTMLResponse:
    return _page(request, viewer, session, status_filter=status_filter, page_no=p)


@router.post("/webhooks", response_class=HTMLResponse)
def create(request: Request, viewer: AdminUser, form: FormDep, session: SessionDep
           ) -> HTMLResponse:
    fields = {k: (form.get(k) or "").strip() or None
              for k in ("name", "url", "group", "tag", "min_score", "fault_class")}
    try:
        body = WebhookCreate.model_validate(fields)
        rule = admin.create_rule(session, **body.model_dump())
    except (ValidationError, ValueError) as exc:
        errors = ([f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
                  if isinstance(exc, ValidationError) else [str(exc)])
        return _page(request, viewer, session, status_filter=None, page_no=1, form=form,
                     errors=errors, status_code=422)
    # The secret is shown once, on this page, like the REST API's 201 answer.
    return _page(request, viewer, session, status_filter=None, page_no=1,
                 created=admin.rule_view(session, rule, with_secret=True))


@router.post("/webhooks/{rule_id}/{action}", response_model=None)
def change(rule_id: RulePath,
           action: Annotated[str, Path(pattern="^(enable|disable|delete)$")],
           _viewer: AdminUser, session: SessionDep) -> Response:
    try:
        if action == "delete":
            admin.delete_rule(session, rule_id)
        else:
            admin.set_enabled(session, rule_id, action == "enable")
    except admin.RuleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return RedirectResponse("/ui/notifications", status_code=303)
