"""Setting a device's desired model: retained ``desired`` message plus the device row."""

from __future__ import annotations

import time

from sqlmodel import Session

from cloud_hub.db.devices import ensure_devices
from cloud_hub.mqtt.publisher import Publisher
from cloud_hub.registry.lifecycle import PublishRefused, get_model
from shared.messages import Desired, ModelRef

__all__ = ["set_desired"]


def set_desired(
    session: Session, *, publisher: Publisher, device_ids: list[str], model: ModelRef | None,
    config: dict[str, float | int | str | bool] | None = None, rollout_id: int | None = None,
    require_published: bool = True,
) -> float:
    """Publish ``desired`` (retained, acknowledged) for every device, then record it; commits.

    Devices never seen before get a row, so a device can be told what to run before it connects.
    A rollback passes ``require_published=False``: the devices still hold the previous version
    even if it was retired since.
    """
    if model is not None:
        record = get_model(session, name=model.name, version=model.version)
        if require_published and record.status != "published":
            raise PublishRefused(
                f"model {model.name} v{model.version} is {record.status}; publish it first"
            )
    now = time.time()
    messages = [
        Desired(device_id=d, model=model, config=dict(config or {}), issued_at=now,
                rollout_id=rollout_id)
        for d in device_ids
    ]
    publisher.publish_desired_many(messages)
    rows = ensure_devices(session, device_ids)
    for device_id in device_ids:
        device = rows[device_id]
        device.desired_name = model.name if model else None
        device.desired_version = model.version if model else None
        device.desired_at = now
        session.add(device)
    session.commit()
    return now
