"""Rollouts: list, create, follow the waves live, pause / resume / abort / roll back.

The form is validated by the REST API's own body model (:class:`RolloutCreate`) and the
actions call the same functions as the API, so both refuse the same things.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from cloud_hub.api.deps import HubDep, SessionDep
from cloud_hub.api.schemas import RolloutCreate, RolloutPolicy
from cloud_hub.core.states import ModelStatus, RolloutAction, RolloutStatus, StageState
from cloud_hub.db.registry_tables import ModelVersion, Rollout
from cloud_hub.registry.lifecycle import ModelNotFound, PublishRefused
from cloud_hub.rollouts.actions import (
    RolloutConflict,
    change_state,
    create_rollout,
    roll_back,
    rollout_summaries,
    rollout_view,
)
from cloud_hub.rollouts.planning import RolloutPlanError
from cloud_hub.ui.render import fragment, page
from cloud_hub.ui.security import AdminUser, FormData, UiUser, Viewer, form_data

router = APIRouter(prefix="/ui", include_in_schema=False)
RolloutPath = Annotated[int, Path(ge=1)]
FormDep = Annotated[FormData, Depends(form_data)]
POLICY_FIELDS = ("canary_size", "wave_size", "min_observation_s", "max_failure_ratio",
                 "max_anomaly_rate_increase", "stage_timeout_s")


def _published(session: Session) -> list[str]:
    return [f"{n}:{v}" for n, v in session.exec(
        select(ModelVersion.name, ModelVersion.version)
        .where(ModelVersion.status == ModelStatus.PUBLISHED)
        .order_by(col(ModelVersion.name), col(ModelVersion.version).desc()))]


def _list_page(request: Request, viewer: Viewer, session: Session, *,
               form: FormData | None = None, errors: list[str] | None = None,
               status_code: int = 200) -> HTMLResponse:
    rows = list(session.exec(select(Rollout).order_by(col(Rollout.id).desc()).limit(100)))
    defaults = RolloutPolicy().model_dump()
    return page(request, "rollouts.html", viewer, session, section="rollouts",
                rollouts=rollout_summaries(session, rows), models=_published(session),
                form=form or {}, errors=errors or [], defaults=defaults,
                policy_fields=POLICY_FIELDS, status_code=status_code)


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts(request: Request, viewer: UiUser, session: SessionDep) -> HTMLResponse:
    return _list_page(request, viewer, session)


def _split(text: str) -> list[str] | None:
    items = [x.strip() for x in text.replace("\n", ",").split(",") if x.strip()]
    return items or None


def _body(form: FormData) -> dict[str, Any]:
    """The form as the REST API's JSON body (validated by the same model)."""
    name, _, version = form.get("model", "").rpartition(":")
    target: dict[str, Any] = {"percent": form.get("percent") or 100}
    for key, value in (("devices", _split(form.get("devices", ""))),
                       ("tags", _split(form.get("tags", ""))),
                       ("group", form.get("group", "").strip() or None)):
        if value:
            target[key] = value
    policy = {k: form[k] for k in POLICY_FIELDS if form.get(k, "").strip()}
    return {"model": {"name": name, "version": version or 0}, "target": target,
            "policy": policy}


@router.post("/rollouts", response_model=None)
def create(request: Request, viewer: AdminUser, form: FormDep, session: SessionDep,
           hub: HubDep) -> Response:
    try:
        body = RolloutCreate.model_validate(_body(form))
        rollout = create_rollout(session, name=body.model.name, version=body.model.version,
                                 target=body.target, policy=body.policy)
    except ValidationError as exc:
        errors = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _list_page(request, viewer, session, form=form, errors=errors,
                          status_code=422)
    except (ModelNotFound, PublishRefused, RolloutConflict, RolloutPlanError) as exc:
        return _list_page(request, viewer, session, form=form, errors=[str(exc)],
                          status_code=409)
    hub.rollouts.wake()
    return RedirectResponse(f"/ui/rollouts/{rollout.id}", status_code=303)


def _rollout(session: Session, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"rollout {rollout_id} does not exist")
    return rollout


def _stages(view: dict[str, Any]) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for index, size in enumerate(view["stage_sizes"]):
        members = [d for d in view["devices"] if d["stage"] == index]
        confirmed = sum(1 for d in members if d["confirmed_at"] is not None)
        running = sum(1 for d in members if d["reported"] and (
            d["reported"]["name"], d["reported"]["version"]) == (
            view["model"]["name"], view["model"]["version"]))  # whichever variant
        failed = sum(1 for d in members if d["failure"])
        reverted = sum(1 for d in members if d["reverted_at"] is not None)
        if reverted:
            state = StageState.REVERTED
        elif index < view["stage"] or (index == view["stage"]
                                       and view["status"] == RolloutStatus.SUCCEEDED):
            state = StageState.DONE
        elif index == view["stage"] and view["status"] in (RolloutStatus.RUNNING,
                                                           RolloutStatus.PAUSED):
            state = StageState.CURRENT
        else:
            state = StageState.WAITING
        stages.append({"index": index, "name": "canary" if index == 0 else f"wave {index}",
                       "size": size, "confirmed": confirmed, "running": running, "failed": failed,
                       "reverted": reverted, "state": state})
    return stages


def _detail(session: Session, rollout: Rollout) -> dict[str, Any]:
    view = rollout_view(session, rollout)
    return {"r": view, "stages": _stages(view)}


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(request: Request, rollout_id: RolloutPath, viewer: UiUser,
                 session: SessionDep) -> HTMLResponse:
    return page(request, "rollout.html", viewer, session, section="rollouts",
                **_detail(session, _rollout(session, rollout_id)))


@router.get("/rollouts/{rollout_id}/body", response_class=HTMLResponse)
def rollout_body(request: Request, rollout_id: RolloutPath, viewer: UiUser,
                 session: SessionDep) -> HTMLResponse:
    return fragment(request, "rollout_body.html", viewer,
                    **_detail(session, _rollout(session, rollout_id)))


@router.post("/rollouts/{rollout_id}/{action}", response_model=None)
def act(request: Request, rollout_id: RolloutPath,
        action: Annotated[str, Path(pattern="^(pause|resume|abort|rollback)$")],
        viewer: AdminUser, session: SessionDep, hub: HubDep) -> Response:
    rollout = _rollout(session, rollout_id)
    try:
        if action == "rollback":
            rollout = roll_back(session, rollout, hub.rollouts, by=viewer.name)
        else:
            rollout = change_state(session, rollout, RolloutAction(action))
    except RolloutConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    hub.rollouts.wake()
    if request.headers.get("hx-request") == "true":
        return fragment(request, "rollout_body.html", viewer, **_detail(session, rollout))
    return RedirectResponse(f"/ui/rollouts/{rollout_id}", status_code=303)
