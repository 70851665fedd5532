"""Setting a device's desired model: retained ``desired`` message plus the device row.

Devices are only ever sent to the newest signed release of a model name: a version that is not
(an older one, or one a retired key signed) is released again first, with a higher release
number, which is what lets the agents, who refuse older releases, go back to it.

A version that keeps other variants (issue 12: quantization "auto" keeps every one that passed
the parity gate) is sent to each device in the variant :func:`pick_for_device` picks for the
runtime its status reported; the device row keeps which variant and why.
"""

from __future__ import annotations

import time

from sqlmodel import Session

from cloud_hub.core.states import ModelStatus
from cloud_hub.db.devices import ensure_devices
from cloud_hub.db.tables import Device
from cloud_hub.registry.lifecycle import PublishRefused, get_model
from cloud_hub.registry.records import variants_of
from cloud_hub.registry.releases import Releases
from cloud_hub.rollouts.variant import DevicePick, pick_for_device, runtime_of
from shared.messages import Desired, ModelRef

__all__ = ["set_desired"]


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
    now = time.time()
    messages = [
        Desired(device_id=d, config=dict(config or {}), issued_at=now, rollout_id=rollout_id,
                model=None if model is None else ModelRef(
                    name=model.name, version=model.version,
                    variant=None if (pick := picks[d]) is None else pick.variant))
        for d in device_ids
    ]
    releases.publisher.publish_desired_many(messages)
    for device_id in device_ids:
        device, pick = rows[device_id], picks[device_id]
        device.desired_name = model.name if model else None
        device.desired_version = model.version if model else None
        device.desired_variant = pick.quantization if pick else None
        device.desired_variant_reason = pick.reason if pick else None
        device.desired_at = now
        session.add(device)
    session.commit()
    return now


def _pick(device: Device, model: ModelRef, published: str, kept: list[str]) -> DevicePick:
    if model.variant is not None:  # asked for by name
        return DevicePick(quantization=model.variant,
                          variant=None if model.variant == published else model.variant,
                          reason="asked for by name")
    return pick_for_device(runtime_of(device.runtime), published=published, variants=kept)
