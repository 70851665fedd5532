"""Turning a :class:`ModelArtifact` into a registry row with a signed manifest."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.training.artifact import ModelArtifact
from shared.codec import sha256_hex, split
from shared.manifest import ChunkTable, Manifest, manifest_from_dict
from shared.signing import SigningKey
from shared.topics import validate_model_name

__all__ = ["build_manifest", "manifest_of", "next_version", "register_artifact"]


def next_version(session: Session, name: str) -> int:
    current = session.exec(
        select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
    ).one()
    return int(current or 0) + 1


def build_manifest(
    artifact: ModelArtifact, *, name: str, version: int, chunk_size: int, key: SigningKey,
    created_at: float | None = None,
) -> Manifest:
    chunks = split(artifact.tflite, chunk_size)
    unsigned = Manifest(
        name=name,
        version=version,
        created_at=created_at if created_at is not None else time.time(),
        quantization=artifact.parity.quantization,
        size=len(artifact.tflite),
        sha256=sha256_hex(artifact.tflite),
        chunk_size=chunk_size,
        chunks=ChunkTable(count=len(chunks), sha256=[sha256_hex(c) for c in chunks]),
        input=artifact.input,
        normalization=artifact.normalization,
        score=artifact.score,
        threshold=artifact.threshold,
        parity=artifact.parity.summary(),
        float_size=artifact.float_size,
        key_id=key.key_id,
    )
    return key.sign(unsigned)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):  # enums
        return value.value
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def register_artifact(
    session: Session, artifact: ModelArtifact, *, name: str, key: SigningKey, chunk_size: int,
    training: dict[str, Any] | None = None, training_job_id: int | None = None,
) -> ModelVersion:
    """Store a new draft version of ``name`` with its signed manifest; commits."""
    validate_model_name(name)
    version = next_version(session, name)
    manifest = build_manifest(
        artifact, name=name, version=version, chunk_size=chunk_size, key=key
    )
    parity = _jsonable(artifact.parity)
    parity["passed"] = artifact.parity.passed
    record = ModelVersion(
        name=name,
        version=version,
        status="draft",
        created_at=manifest.created_at,
        family=artifact.spec.family,
        spec=_jsonable(artifact.spec),
        channels=list(artifact.channels),
        training={
            **(training or {}),
            "rows": artifact.training_rows,
            "windows": artifact.training_windows,
            "train_seconds": artifact.train_seconds,
        },
        normalization=artifact.normalization.to_dict(),
        input=artifact.input.to_dict(),
        score=artifact.score.to_dict(),
        threshold=artifact.threshold,
        threshold_method=artifact.threshold_method,
        quantization=artifact.parity.quantization.value,
        size_bytes=len(artifact.tflite),
        float_size_bytes=artifact.float_size,
        sha256=manifest.sha256,
        parity=parity,
        parity_passed=artifact.parity.passed,
        parity_failure=artifact.parity.failure_reason(),
        validation=_jsonable(artifact.validation),
        extra=_jsonable(artifact.extra),
        key_id=key.key_id,
        manifest=manifest.to_dict(),
        tflite=artifact.tflite,
        training_job_id=training_job_id,
    )
    session.add(record)
    session.commit()
    session.refresh(record)
    return record


def manifest_of(record: ModelVersion) -> Manifest:
    return manifest_from_dict(record.manifest)
