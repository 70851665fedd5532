"""Setting a device's desired model: retained ``desired`` message plus the device row.

Devices are only ever sent to the newest signed release of a model name: a version that is not
(an older one, or one a retired key signed) is released again first, with a higher release
number, which is what lets the agents, who refuse older releases, go back to it.

A version that keeps other variants (issue 12: quantization "auto" keeps every one that passed
the parity gate) is sent to each device in the variant :func:`pick_for_device` picks for the
runtime its status reported; the device row keeps which variant and why. A device whose desired
was set before its status named a runtime (before it first connected, say) got the published
variant; :func:`repick_variants` picks again once the runtime is known.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, col, func, select

from cloud_hub.core.states import ModelStatus, RolloutStatus
from cloud_hub.db.devices import ensure_devices
from cloud_hub.db.leases import confirm_lease
from cloud_hub.db.registry_tables import Rollout, RolloutDevice
from cloud_hub.db.tables import Device
from cloud_hub.registry.lifecycle import ModelNotFound, PublishRefused, get_model
from cloud_hub.registry.records import variants_of
from cloud_hub.registry.releases import Releases
from cloud_hub.rollouts.variant import (
    NO_RUNTIME_REASON,
    DevicePick,
    pick_for_device,
    runtime_of,
)
from shared.messages import Desired, ModelRef

__all__ = ["desired_writes", "repick_variants", "running_rollouts", "set_desired"]

log = logging.getLogger(__name__)

_DESIRED_LOCK = threading.Lock()
_PG_DESIRED_KEY = 0x6465_7369_7265_6400 & 0x7FFF_FFFF_FFFF_FFFF  # "desired"


@contextlib.contextmanager
def desired_writes(session: Session) -> Iterator[None]:
    """One writer of retained ``desired`` records at a time, in this process and (on
    PostgreSQL, a transaction-level advisory lock, released by the session's commit or
    rollback) across hub processes: what a writer publishes then commits, or reads then
    publishes, is never interleaved with another's (:mod:`cloud_hub.rollouts.retained`). The
    caller ends the session's transaction inside the block."""
    with _DESIRED_LOCK:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_DESIRED_KEY})
        yield


def set_desired(
    session: Session, *, releases: Releases, device_ids: list[str], model: ModelRef | None,
    config: dict[str, float | int | str | bool] | None = None, rollout_id: int | None = None,
    require_published: bool = True, reason: str = "desired",
) -> float:
    """Publish ``desired`` (retained, acknowledged) for every device, then record it; commits.

    Devices never seen before get a row, so a device can be told what to run before it connects.
    A rollback passes ``require_published=False``: the devices still hold the previous version
    even if it was retired since, and its new release publishes it again. ``model.variant``, if
    given, sends every device that variant (refused if the version does not keep it); else, for
    a version that keeps several, each device gets the variant picked for its runtime (the
    device row says which and why; it stays empty for a version with one variant).
    """
    rows = ensure_devices(session, device_ids)
    picks: dict[str, DevicePick | None] = dict.fromkeys(device_ids)
    if model is not None:
        record = get_model(session, name=model.name, version=model.version)
        if require_published and record.status != ModelStatus.PUBLISHED:
            raise PublishRefused(
                f"model {model.name} v{model.version} is {record.status}; publish it first"
            )
        kept = [v.quantization for v in variants_of(session, record)]
        if model.variant is not None and model.variant not in {record.quantization, *kept}:
            raise PublishRefused(
                f"model {model.name} v{model.version} has no variant {model.variant!r} "
                f"(it has: {', '.join(sorted({record.quantization, *kept}))})")
        releases.ensure_latest(session, record, reason=reason)
        if kept or model.variant is not None:  # a version with one variant has no choice
            for device_id in device_ids:
                picks[device_id] = _pick(rows[device_id], model, record.quantization, kept)
    with desired_writes(session):
        now = time.time()
        messages = [
            Desired(device_id=d, config=dict(config or {}), issued_at=now,
                    rollout_id=rollout_id, model=None if model is None else ModelRef(
                        name=model.name, version=model.version,
                        variant=None if (pick := picks[d]) is None else pick.variant))
            for d in device_ids
        ]
        confirm_lease(session)  # a rollout tick that lost its lease publishes nothing
        releases.publisher.publish_desired_many(messages)
        for device_id in device_ids:
            device, pick = rows[device_id], picks[device_id]
            device.desired_name = model.name if model else None
            device.desired_version = model.version if model else None
            device.desired_variant = pick.quantization if pick else None
            device.desired_variant_reason = pick.reason if pick else None
            device.desired_at = now
            device.desired_config = dict(config or {})
            session.add(device)
        session.commit()
    return now


def repick_variants(session: Session, *, releases: Releases) -> list[str]:
    """Pick the variant again for every device that was sent the published variant because
    its runtime was unknown, now that its status has named one; commits.

    Where the pick changes, the device's ``desired`` is sent again, naming the variant, with
    the config it had and the rollout it belongs to (an agent still downloading the published
    variant drops it for the other; one that already runs it keeps it until the next version).
    Where it does not, only the device row's reason changes. Returns the devices sent again."""
    waiting = session.exec(select(Device).where(
        Device.desired_variant_reason == NO_RUNTIME_REASON)).all()
    groups: dict[tuple[str, int, int | None, str], list[str]] = defaultdict(list)
    configs: dict[tuple[str, int, int | None, str], dict[str, Any]] = {}
    versions: dict[tuple[str, int], tuple[str, list[str]] | None] = {}
    rollouts = running_rollouts(session, waiting)
    for device in waiting:
        runtime = runtime_of(device.runtime)
        if runtime is None or device.desired_name is None or device.desired_version is None:
            continue
        ref = (device.desired_name, device.desired_version)
        if ref not in versions:
            versions[ref] = _variants(session, *ref)
        if (found := versions[ref]) is None:
            continue
        published, kept = found
        pick = pick_for_device(runtime, published=published, variants=kept)
        if pick.variant is None:  # the published variant, which it was sent already
            device.desired_variant, device.desired_variant_reason = pick.quantization, pick.reason
            session.add(device)
            continue
        config = dict(device.desired_config or {})
        key = (device.desired_name, device.desired_version, rollouts.get(device.device_id),
               repr(sorted(config.items())))
        groups[key].append(device.device_id)
        configs[key] = config
    session.commit()
    sent: list[str] = []
    for key, device_ids in groups.items():
        name, version, rollout_id, _ = key
        try:
            set_desired(session, releases=releases, device_ids=device_ids,
                        model=ModelRef(name=name, version=version), config=configs[key],
                        rollout_id=rollout_id, require_published=False)  # commits
        except PublishRefused as exc:  # e.g. the version was deleted since
            log.warning("variant not picked again for %s: %s", device_ids, exc)
            session.rollback()
            continue
        sent.extend(device_ids)
    return sent


def _variants(session: Session, name: str, version: int) -> tuple[str, list[str]] | None:
    """A version's published quantization and the other variants it keeps (None: deleted)."""
    try:
        record = get_model(session, name=name, version=version)
    except ModelNotFound:
        return None
    return record.quantization, [v.quantization for v in variants_of(session, record)]


def running_rollouts(session: Session, devices: Sequence[Device]) -> dict[str, int]:
    """device id -> the running rollout that sent it its desired version (the newest, where
    several name it), for those of ``devices`` that have one: one query, matched in SQL."""
    ids = {d.device_id for d in devices if d.desired_name is not None}
    if not ids:
        return {}
    rows = session.exec(
        select(RolloutDevice.device_id, func.max(Rollout.id))
        .join(Rollout, col(RolloutDevice.rollout_id) == Rollout.id)
        .join(Device, col(Device.device_id) == RolloutDevice.device_id)
        .where(col(Rollout.model_name) == Device.desired_name,
               col(Rollout.model_version) == Device.desired_version,
               col(Rollout.status).in_((RolloutStatus.RUNNING, RolloutStatus.ROLLING_BACK)))
        .group_by(col(RolloutDevice.device_id))).all()
    return {d: r for d, r in rows if d in ids and r is not None}


def _pick(device: Device, model: ModelRef, published: str, kept: list[str]) -> DevicePick:
    if model.variant is not None:  # asked for by name
        return DevicePick(quantization=model.variant,
                          variant=None if model.variant == published else model.variant,
                          reason="asked for by name")
    return pick_for_device(runtime_of(device.runtime), published=published, variants=kept)
