"""Publishing and retiring registered versions (the parity gate is enforced by the release)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlmodel import Session, select

from cloud_hub.core.states import ModelStatus
from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.mqtt.publisher import Publisher
from cloud_hub.registry.records import chunk_count, variants_of

if TYPE_CHECKING:
    from cloud_hub.registry.releases import Releases

__all__ = ["ModelNotFound", "PublishRefused", "get_model", "publish_model", "retire_model"]


class ModelNotFound(LookupError):
    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"model {name} v{version} is not in the registry")


class PublishRefused(RuntimeError):
    """The version may not be published; ``figure`` names what failed."""

    def __init__(self, message: str, figure: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.figure = figure or {}


def get_model(session: Session, *, name: str, version: int) -> ModelVersion:
    record = session.exec(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    ).first()
    if record is None:
        raise ModelNotFound(name, version)
    return record


def publish_model(
    session: Session, *, name: str, version: int, releases: Releases
) -> ModelVersion:
    """Sign and publish retained manifest + chunks, unless the parity gate failed or it was
    retired (see :meth:`Releases.publish`)."""
    return releases.publish(session, get_model(session, name=name, version=version))


def retire_model(
    session: Session, *, name: str, version: int, publisher: Publisher
) -> ModelVersion:
    """Clear the retained manifests and chunks (of every variant) and mark the version
    retired."""
    record = get_model(session, name=name, version=version)
    for variant in variants_of(session, record):
        publisher.clear_model(name, version, int(variant.manifest["chunks"]["count"]),
                              variant.quantization)
    publisher.clear_model(name, version, chunk_count(record))
    record.status = ModelStatus.RETIRED
    record.retired_at = time.time()
    session.add(record)
    session.commit()
    session.refresh(record)
    return record
