"""What an admin does to rollouts: create, pause, resume, abort, roll back, and the status
view. The REST API and the console both call these, so both apply the same checks."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from cloud_hub.core.states import ModelStatus, RolloutAction, RolloutStatus
from cloud_hub.db.devices import ensure_devices
from cloud_hub.db.registry_tables import Rollout, RolloutDevice
from cloud_hub.db.tables import Device
from cloud_hub.registry.lifecycle import PublishRefused, get_model
from cloud_hub.rollouts.controller import ACTIVE_STATES, RolloutController
from cloud_hub.rollouts.planning import plan_stages, resolve_target
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget

__all__ = ["ROLL_BACK_FROM", "RolloutConflict", "change_state", "create_rollout", "roll_back",
           "rollout_summaries",
           "rollout_view"]


class RolloutConflict(RuntimeError):
    """The action does not fit the rollout's state (or another rollout is in the way)."""


def create_rollout(
    session: Session, *, name: str, version: int, target: RolloutTarget,
    policy: RolloutPolicy,
) -> Rollout:
    record = get_model(session, name=name, version=version)
    if record.status != ModelStatus.PUBLISHED:
        raise PublishRefused(f"model {name} v{version} is {record.status}; publish it first")
    devices = resolve_target(session, devices=target.devices, group=target.group,
                             tags=target.tags, percent=target.percent)
    busy = session.exec(
        select(RolloutDevice.device_id, Rollout.id)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(col(Rollout.status).in_(ACTIVE_STATES), col(RolloutDevice.device_id).in_(devices))
    ).first()
    if busy is not None:
        raise RolloutConflict(f"device {busy[0]} is in active rollout {busy[1]}; "
                              "pause/abort it or wait for it to finish")
    stages = plan_stages(devices, canary_size=policy.canary_size,
                         canary_percent=policy.canary_percent, wave_size=policy.wave_size)
    rollout = Rollout(model_name=name, model_version=version, target=target, policy=policy,
                      stages=stages, created_at=time.time())
    session.add(rollout)
    session.flush()
    assert rollout.id is not None
    ensure_devices(session, devices)
    for index, stage in enumerate(stages):
        for device_id in stage:
            session.add(RolloutDevice(rollout_id=rollout.id, device_id=device_id, stage=index))
    session.commit()
    session.refresh(rollout)
    return rollout


_TRANSITIONS: dict[RolloutAction, tuple[set[RolloutStatus], RolloutStatus]] = {
    RolloutAction.PAUSE: ({RolloutStatus.RUNNING}, RolloutStatus.PAUSED),
    RolloutAction.RESUME: ({RolloutStatus.PAUSED}, RolloutStatus.RUNNING),
    RolloutAction.ABORT: ({RolloutStatus.RUNNING, RolloutStatus.PAUSED}, RolloutStatus.ABORTED),
}


def change_state(session: Session, rollout: Rollout, action: RolloutAction) -> Rollout:
    """pause / resume / abort. Abort stops promoting and leaves devices where they are."""
    allowed, new_state = _TRANSITIONS[action]
    if rollout.status not in allowed:
        raise RolloutConflict(f"rollout {rollout.id} is {rollout.status}; cannot {action}")
    rollout.status = new_state
    if new_state == RolloutStatus.ABORTED:
        rollout.finished_at = time.time()
        rollout.reason = "aborted by an admin"
    session.add(rollout)
    session.commit()
    session.refresh(rollout)
    return rollout


ROLL_BACK_FROM = (RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.SUCCEEDED,
                  RolloutStatus.ABORTED)


def roll_back(session: Session, rollout: Rollout, controller: RolloutController,
              *, by: str) -> Rollout:
    """Set every device this rollout touched back to the model it ran before.

    The rollout is ``rolling_back`` until each of them reports that model, then
    ``rolled_back``.
    """
    assert rollout.id is not None
    refused = controller.roll_back_on_request(rollout.id, f"rolled back by {by}",
                                              ROLL_BACK_FROM)
    if refused is not None:
        raise RolloutConflict(f"rollout {rollout.id} is {refused}; cannot roll back")
    session.refresh(rollout)
    return rollout


def _view(rollout: Rollout, counts: tuple[int, int, int, int],
          variants: dict[str, int]) -> dict[str, Any]:
    total, updated, failed, reverted = counts
    return {
        "id": rollout.id, "model": {"name": rollout.model_name,
                                    "version": rollout.model_version},
        "status": rollout.status, "reason": rollout.reason, "stage": rollout.stage,
        "stages": len(rollout.stages), "stage_sizes": [len(s) for s in rollout.stages],
        "devices_total": total, "devices_updated": updated, "devices_failed": failed,
        "devices_reverted": reverted, "variants": variants,
        "target": rollout.target.model_dump(mode="json"),
        "policy": rollout.policy.model_dump(mode="json"), "created_at": rollout.created_at,
        "finished_at": rollout.finished_at, "seconds_to_full": rollout.seconds_to_full,
    }


def rollout_summaries(session: Session, rollouts: list[Rollout]) -> list[dict[str, Any]]:
    """Views of a page of rollouts without their devices: counts come from one query."""
    ids = [r.id for r in rollouts]
    stmt = (select(  # type: ignore[call-overload]
                   RolloutDevice.rollout_id, func.count(),
                   func.count(col(RolloutDevice.confirmed_at)),
                   func.count(col(RolloutDevice.failed_at)),
                   func.count(col(RolloutDevice.revert_confirmed_at)))
            .where(col(RolloutDevice.rollout_id).in_(ids))
            .group_by(col(RolloutDevice.rollout_id)))
    counts = {rid: (int(t), int(u), int(f), int(r)) for rid, t, u, f, r in session.exec(stmt)}
    variants: dict[int, dict[str, int]] = {}
    for rid, variant, n in session.exec(
            select(RolloutDevice.rollout_id, RolloutDevice.variant, func.count())
            .where(col(RolloutDevice.rollout_id).in_(ids), col(RolloutDevice.variant).is_not(None))
            .group_by(col(RolloutDevice.rollout_id), col(RolloutDevice.variant))):
        variants.setdefault(rid, {})[str(variant)] = int(n)
    return [_view(r, counts.get(r.id, (0, 0, 0, 0)), variants.get(r.id or 0, {}))
            for r in rollouts]


def rollout_view(session: Session, rollout: Rollout, *, with_devices: bool = True
                 ) -> dict[str, Any]:
    members = list(session.exec(select(RolloutDevice).where(
        RolloutDevice.rollout_id == rollout.id).order_by(col(RolloutDevice.stage),
                                                         col(RolloutDevice.device_id))))
    view = _view(rollout, (
        len(members), sum(1 for m in members if m.confirmed_at is not None),
        sum(1 for m in members if m.failed_at is not None),
        sum(1 for m in members if m.revert_confirmed_at is not None)),
        dict(Counter(m.variant for m in members if m.variant is not None)))
    if with_devices:
        devices = {d.device_id: d for d in session.exec(select(Device).where(
            col(Device.device_id).in_([m.device_id for m in members])))}
        view["devices"] = [_device_row(m, devices.get(m.device_id)) for m in members]
    return view


def _device_row(m: RolloutDevice, d: Device | None) -> dict[str, Any]:
    def ref(name: str | None, version: int | None) -> dict[str, Any] | None:
        return {"name": name, "version": version} if name and version else None

    def with_variant(r: dict[str, Any] | None, variant: str | None, reason: str | None = None
                     ) -> dict[str, Any] | None:
        if r is not None and variant:
            r["variant"] = variant
            if reason:
                r["variant_reason"] = reason
        return r

    return {
        "device_id": m.device_id, "stage": m.stage,
        "previous": ref(m.previous_name, m.previous_version),
        "variant": m.variant,
        "desired": with_variant(ref(d.desired_name, d.desired_version), d.desired_variant,
                                d.desired_variant_reason) if d else None,
        "reported": with_variant(ref(d.active_name, d.active_version), d.active_variant)
        if d else None,
        "reported_state": d.reported_state if d else None,
        "reported_error": d.reported_error if d else None,
        "confirmed_at": m.confirmed_at, "failure": m.failure,
        "reverted_at": m.reverted_at, "revert_confirmed_at": m.revert_confirmed_at,
    }
