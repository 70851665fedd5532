"""Setting a device's desired model: retained ``desired`` message plus the device row.

Devices are only ever sent to the newest signed release of a model name: a version that is not
(an older one, or one a retired key signed) is released again first, with a higher release
number, which is what lets the agents, who refuse older releases, go back to it.
"""

from __future__ import annotations

import time

from sqlmodel import Session

from cloud_hub.core.states import ModelStatus
from cloud_hub.db.devices import ensure_devices
from cloud_hub.registry.lifecycle import PublishRefused, get_model
from cloud_hub.registry.releases import Releases
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
    even if it was retired since, and its new release publishes it again.
    """
    if model is not None:
        record = get_model(session, name=model.name, version=model.version)
        if require_published and record.status != ModelStatus.PUBLISHED:
            raise PublishRefused(
                f"model {model.name} v{model.version} is {record.status}; publish it first"
            )
        releases.ensure_latest(session, record, reason=reason)
    now = time.time()
    messages = [
        Desired(device_id=d, model=model, config=dict(config or {}), issued_at=now,
                rollout_id=rollout_id)
        for d in device_ids
    ]
    releases.publisher.publish_desired_many(messages)
    rows = ensure_devices(session, device_ids)
    for device_id in device_ids:
        device = rows[device_id]
        device.desired_name = model.name if model else None
        device.desired_version = model.version if model else None
        device.desired_at = now
        session.add(device)
    session.commit()
    return now
