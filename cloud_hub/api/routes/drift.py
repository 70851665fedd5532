"""Drift: the fleet drift view, a device's drift summaries, retrain policies and retrain runs."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from sqlmodel import col, select

from cloud_hub.api.checks import refuse_unenrolled
from cloud_hub.api.deps import AdminKey, HubDep, IdPath, ReadKey, SessionDep
from cloud_hub.api.drift_schemas import RetrainPolicyBody, RetrainRunCreate
from cloud_hub.api.errors import errors
from cloud_hub.api.paging import PAGE_HEADERS, CursorQuery, paged
from cloud_hub.core.states import RetrainState, RetrainTrigger
from cloud_hub.db.drift_tables import DeviceDrift, DriftSummaryRow, RetrainPolicy, RetrainRun
from cloud_hub.db.enrollments import enrolled_among
from cloud_hub.db.paging import keyset_page
from cloud_hub.db.tables import Device
from cloud_hub.drift.loop import RetrainError, open_run, policy_for
from cloud_hub.drift.views import (
    device_drift_view,
    drift_page,
    policy_view,
    run_view,
    summary_view,
)
from shared.topics import DEVICE_ID_PATTERN

router = APIRouter(tags=["drift"])
DevicePath = Annotated[str, Path(pattern=rf"^{DEVICE_ID_PATTERN}$")]
GroupPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
RunPath = IdPath


@router.get("/drift", responses=PAGE_HEADERS)
def fleet_drift(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    group: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[str | None, Query(pattern="^(warming|stable|drift)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: CursorQuery = None,
) -> list[dict[str, Any]]:
    """Per device: drift state, since when, which channels, and the anomaly rate of its latest
    summary against its baseline (the rate right after its model was installed)."""
    return paged(request, response, cursor, lambda after: drift_page(
        session, group=group, state=state, limit=limit, after=after))


@router.get("/drift/{device_id}", responses=errors(404))
def device_drift(
    device_id: DevicePath, session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    """A device's drift state and its latest summaries (newest first)."""
    drift = session.get(DeviceDrift, device_id)
    if drift is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"device {device_id} has sent no drift summary")
    rows = session.exec(select(DriftSummaryRow).where(DriftSummaryRow.device_id == device_id)
                        .order_by(col(DriftSummaryRow.period_end).desc()).limit(limit))
    return {**device_drift_view(drift, session.get(Device, device_id)),
            "summaries": [summary_view(r) for r in rows]}


@router.get("/retrain-policies", responses=PAGE_HEADERS)
def retrain_policies(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: CursorQuery = None,
) -> list[dict[str, Any]]:
    """Every group's policy; ``default`` applies to devices whose group has none."""
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, select(RetrainPolicy), order=[col(RetrainPolicy.group)], limit=limit,
        after=after))
    return [policy_view(p) for p in rows]


@router.put("/retrain-policies/{group}")
def put_retrain_policy(group: GroupPath, body: RetrainPolicyBody, session: SessionDep,
                       hub: HubDep, _key: AdminKey) -> dict[str, Any]:
    """Create or replace the retrain policy of a device group (``default``: every device
    whose group has no policy of its own)."""
    policy = session.get(RetrainPolicy, group) or RetrainPolicy(group=group, updated_at=0.0)
    for key, value in body.stored().items():
        setattr(policy, key, value)
    policy.updated_at = time.time()
    session.add(policy)
    session.commit()
    session.refresh(policy)
    hub.retrain.wake()
    return policy_view(policy)


@router.delete("/retrain-policies/{group}", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors(404))
def delete_retrain_policy(group: GroupPath, session: SessionDep, _key: AdminKey) -> None:
    policy = session.get(RetrainPolicy, group)
    if policy is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"group {group} has no retrain policy")
    session.delete(policy)
    session.commit()


@router.get("/retrain-runs", responses=PAGE_HEADERS)
def retrain_runs(
    request: Request, response: Response, session: SessionDep, _key: ReadKey,
    state: RetrainState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: CursorQuery = None,
) -> list[dict[str, Any]]:
    """Newest first, each with every step and its reason."""
    stmt = select(RetrainRun)
    if state:
        stmt = stmt.where(RetrainRun.state == state)
    rows = paged(request, response, cursor, lambda after: keyset_page(
        session, stmt, order=[col(RetrainRun.id)], limit=limit, after=after, descending=True))
    return [run_view(r) for r in rows]


@router.get("/retrain-runs/{run_id}", responses=errors(404))
def retrain_run(run_id: RunPath, session: SessionDep, _key: ReadKey) -> dict[str, Any]:
    run = session.get(RetrainRun, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"retrain run {run_id} does not exist")
    return run_view(run)


@router.post("/retrain-runs", status_code=status.HTTP_201_CREATED, responses=errors(409))
def start_retrain_run(body: RetrainRunCreate, session: SessionDep, hub: HubDep,
                      caller: AdminKey) -> dict[str, Any]:
    """An operator's retraining: of ``devices``, or of every device of ``group`` that runs a
    model; trained, gated, released and rolled out like an automatic one."""
    if bool(body.devices) == bool(body.group):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{
            "loc": ["body", "devices"], "type": "value_error",
            "msg": "give either devices or group"}])
    if body.devices:
        devices = sorted(set(body.devices))
        found = {d.device_id: d for d in session.exec(
            select(Device).where(col(Device.device_id).in_(devices)))}
        missing = [d for d in devices if d not in found]
        if missing:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{
                "loc": ["body", "devices"], "type": "value_error",
                "msg": f"devices {missing} are not known to the hub"}])
        # A revoked device's data is not trained on and it takes no rollout.
        refuse_unenrolled(session, body.devices, ["body", "devices"])
        groups = {found[d].group for d in devices}
    else:
        members = list(session.exec(select(Device).where(Device.group == body.group)))
        enrolled = enrolled_among(session, [d.device_id for d in members])
        devices = sorted(d.device_id for d in members if d.active_name and d.device_id in enrolled)
        if not members:
            raise HTTPException(status.HTTP_409_CONFLICT, f"group {body.group!r} has no devices")
        if not enrolled:
            raise HTTPException(status.HTTP_409_CONFLICT, f"no device of group {body.group!r} "
                                                          "is enrolled: nothing to retrain")
        if not devices:
            raise HTTPException(status.HTTP_409_CONFLICT, f"no device of group {body.group!r} "
                                                          "runs a model: nothing to retrain")
        groups = {body.group}
    policies = {p.group: p for p in session.exec(select(RetrainPolicy))}
    policy = policy_for(policies, groups.pop() if len(groups) == 1 else None)
    now = time.time()
    try:
        run = open_run(session, devices=devices, trigger=RetrainTrigger.OPERATOR,
                       reason=f"{caller.name}: {body.reason}", now=now, policy=policy,
                       since=now - body.recent_s if body.recent_s else None,
                       requested_by=caller.name, source=body.source)
    except RetrainError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    hub.retrain.wake()
    return run_view(run)
