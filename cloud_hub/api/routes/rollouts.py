"""Rollouts: create (canary + waves + policy), follow, pause, resume, abort, roll back."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlmodel import col, select

from cloud_hub.api.deps import AdminKey, HubDep, IdPath, ReadKey, SessionDep
from cloud_hub.api.errors import errors
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.api.schemas import RolloutCreate, RolloutPublic
from cloud_hub.core.states import RolloutAction
from cloud_hub.db.paging import keyset_page
from cloud_hub.db.registry_tables import Rollout
from cloud_hub.keys.ring import KeyUnavailable
from cloud_hub.mqtt.publisher import PublishError
from cloud_hub.registry.lifecycle import ModelNotFound, PublishRefused
from cloud_hub.rollouts.actions import (
    RolloutConflict,
    change_state,
    create_rollout,
    roll_back,
    rollout_summaries,
    rollout_view,
)
from cloud_hub.rollouts.planning import RolloutPlanError, UnknownDevices

router = APIRouter(prefix="/rollouts", tags=["rollouts"])
RolloutPath = IdPath


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RolloutPublic,
             responses=errors(404, 409))
def create(body: RolloutCreate, session: SessionDep, hub: HubDep,
           _key: AdminKey) -> dict[str, Any]:
    """Start a staged rollout: the canary first, then waves, each judged by the policy."""
    try:
        rollout = create_rollout(
            session, name=body.model.name, version=body.model.version,
            target=body.target, policy=body.policy,
        )
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except (PublishRefused, RolloutConflict) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except UnknownDevices as exc:
        positions = {d: i for i, d in enumerate(body.target.devices or [])}
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [
            {"loc": ["body", "target", "devices", positions.get(d, 0)],
             "msg": f"device {d!r} is not known to the hub (never connected nor registered)",
             "type": "value_error", "input": d}
            for d in exc.device_ids]) from None
    except RolloutPlanError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "target"], "msg": str(exc), "type": "value_error"}],
        ) from None
    hub.rollouts.wake()
    return rollout_view(session, rollout)


MAX_ROLLOUTS = 1000


@router.get("", response_model=list[RolloutPublic], responses=PAGE_HEADERS)
def rollouts(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=MAX_ROLLOUTS)] = 100,
    cursor: CursorQuery = None,
) -> list[dict[str, Any]]:
    """Newest first, without the per-device rows (``GET /rollouts/{id}`` has them)."""
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, select(Rollout), order=[col(Rollout.id)], limit=limit, after=after,
        descending=True))
    return rollout_summaries(session, rows)


def _get(session: SessionDep, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"rollout {rollout_id} does not exist")
    return rollout


@router.get("/{rollout_id}", response_model=RolloutPublic, responses=errors(404))
def rollout(rollout_id: RolloutPath, session: SessionDep, _key: ReadKey) -> dict[str, Any]:
    """Status, per-device desired vs reported, and ``seconds_to_full`` once it succeeded."""
    return rollout_view(session, _get(session, rollout_id))


def _act(rollout_id: int, action: RolloutAction, session: SessionDep,
         hub: HubDep) -> dict[str, Any]:
    try:
        updated = change_state(session, _get(session, rollout_id), action)
    except RolloutConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    hub.rollouts.wake()
    return rollout_view(session, updated)


@router.post("/{rollout_id}/pause", response_model=RolloutPublic, responses=errors(404, 409))
def pause(rollout_id: RolloutPath, session: SessionDep, hub: HubDep,
          _key: AdminKey) -> dict[str, Any]:
    return _act(rollout_id, RolloutAction.PAUSE, session, hub)


@router.post("/{rollout_id}/resume", response_model=RolloutPublic, responses=errors(404, 409))
def resume(rollout_id: RolloutPath, session: SessionDep, hub: HubDep,
           _key: AdminKey) -> dict[str, Any]:
    return _act(rollout_id, RolloutAction.RESUME, session, hub)


@router.post("/{rollout_id}/abort", response_model=RolloutPublic, responses=errors(404, 409))
def abort(rollout_id: RolloutPath, session: SessionDep, hub: HubDep,
          _key: AdminKey) -> dict[str, Any]:
    return _act(rollout_id, RolloutAction.ABORT, session, hub)


@router.post("/{rollout_id}/rollback", response_model=RolloutPublic,
             responses=errors(404, 409, 503))
def rollback(rollout_id: RolloutPath, session: SessionDep, hub: HubDep,
             caller: AdminKey) -> dict[str, Any]:
    """Set `desired` back to the previous model on every device the rollout touched (also
    after it succeeded); `rolled_back` once each of them reports that model. The previous
    model goes out as a new signed release: devices refuse an older release than they run."""
    try:
        updated = roll_back(session, _get(session, rollout_id), hub.rollouts, by=caller.name)
    except (RolloutConflict, PublishRefused) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (PublishError, KeyUnavailable) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return rollout_view(session, updated)
