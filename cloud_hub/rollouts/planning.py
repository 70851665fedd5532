"""Choosing a rollout's devices and cutting them into a canary stage and waves."""

from __future__ import annotations

import hashlib
import math

from sqlmodel import Session, col, select

from cloud_hub.db.enrollments import NotEnrolled, enrolled_among, require_enrolled
from cloud_hub.db.queries import list_devices
from cloud_hub.db.tables import Device

__all__ = ["RolloutPlanError", "UnknownDevices", "plan_stages", "resolve_target",
           "unknown_devices"]


class RolloutPlanError(ValueError):
    """The target selects no device, or names devices the hub has never heard of."""


class UnknownDevices(RolloutPlanError):
    """Device ids in the target that the hub does not know (never connected nor enrolled)."""

    def __init__(self, device_ids: list[str]) -> None:
        super().__init__(f"device(s) {device_ids} are not known to the hub (never connected "
                         "nor registered); a rollout targets known devices only")
        self.device_ids = device_ids


def unknown_devices(session: Session, device_ids: list[str]) -> list[str]:
    """Those of ``device_ids`` that have no row in the hub's device registry."""
    known: set[str] = set()
    wanted = sorted(set(device_ids))
    for i in range(0, len(wanted), 500):
        known.update(session.exec(select(Device.device_id).where(
            col(Device.device_id).in_(wanted[i:i + 500]))))
    return [d for d in wanted if d not in known]


def _spread(device_id: str) -> str:
    # A stable pseudo-random order, so "10 % of plant-a" is the same 10 % on every call.
    return hashlib.sha256(device_id.encode()).hexdigest()


def resolve_target(
    session: Session, *, devices: list[str] | None, group: str | None, tags: list[str] | None,
    percent: int,
) -> list[str]:
    """Explicit device ids (known to the hub and enrolled) or group/tag filters (enrolled
    devices only); then ``percent`` of them."""
    if devices:
        chosen = sorted(set(devices))
        unknown = unknown_devices(session, chosen)
        if unknown:
            raise UnknownDevices(unknown)
        try:
            require_enrolled(session, chosen, "rollout target")
        except NotEnrolled as exc:
            raise RolloutPlanError(str(exc)) from None
    else:
        rows = list_devices(session, group=group)
        if tags:
            rows = [d for d in rows if set(tags) <= set(d.tags or [])]
        enrolled = enrolled_among(session, [d.device_id for d in rows])
        chosen = sorted(d.device_id for d in rows if d.device_id in enrolled)
    if not chosen:
        raise RolloutPlanError(f"target group={group!r} tags={tags!r} selects no device")
    if percent < 100:
        count = max(1, math.ceil(len(chosen) * percent / 100))
        chosen = sorted(sorted(chosen, key=_spread)[:count])
    return chosen


def plan_stages(
    devices: list[str], *, canary_size: int, canary_percent: int | None, wave_size: int
) -> list[list[str]]:
    """Canary first, then waves; the canary is picked by the same stable spread."""
    ordered = sorted(devices, key=_spread)
    size = canary_size
    if canary_percent is not None:
        size = max(1, math.ceil(len(ordered) * canary_percent / 100))
    size = min(size, len(ordered))
    stages = [ordered[:size]]
    rest = ordered[size:]
    stages += [rest[i : i + wave_size] for i in range(0, len(rest), wave_size)]
    return stages
