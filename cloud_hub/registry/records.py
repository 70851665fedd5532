"""Turning a :class:`ModelArtifact` into a registry row (a draft: its manifest is not signed).

Only a release signs a manifest (:mod:`cloud_hub.registry.releases`), and only a version that
passed the parity gate is ever released, so a model that failed the gate never carries a valid
signature.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from cloud_hub.core.states import ModelStatus
from cloud_hub.db.registry_tables import ModelVariant, ModelVersion
from cloud_hub.training.artifact import ArtifactVariant, ModelArtifact
from shared.codec import sha256_hex, split
from shared.manifest import ChunkTable, Manifest, manifest_from_dict
from shared.signing import SigningKey
from shared.topics import validate_model_name

__all__ = [
    "UNSIGNED_FIELDS",
    "build_manifest",
    "chunk_count",
    "manifest_body",
    "next_version",
    "register_artifact",
    "sign_release",
    "sign_variant",
    "variants_of",
]

# What only a release adds to a draft's manifest.
UNSIGNED_FIELDS = ("v", "release", "key_id", "signature")


def next_version(session: Session, name: str) -> int:
    current = session.exec(
        select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
    ).one()
    return int(current or 0) + 1


def build_manifest(
    artifact: ModelArtifact, *, name: str, version: int, chunk_size: int,
    created_at: float | None = None, variant: ArtifactVariant | None = None,
) -> dict[str, Any]:
    """The manifest's fields without ``release``, ``key_id`` and ``signature`` (a draft's), of
    the artifact's published model or of one of its ``variant``s."""
    tflite = artifact.tflite if variant is None else variant.tflite
    parity = artifact.parity if variant is None else variant.parity
    chunks = split(tflite, chunk_size)
    body: dict[str, Any] = {
        "name": name,
        "version": version,
        "created_at": created_at if created_at is not None else time.time(),
        "quantization": parity.quantization.value,
        "size": len(tflite),
        "sha256": sha256_hex(tflite),
        "chunk_size": chunk_size,
        "chunks": ChunkTable.of(chunks).to_dict(),
        "input": artifact.input.to_dict(),
        "normalization": artifact.normalization.to_dict(),
        "score": artifact.score.to_dict(),
        "threshold": artifact.threshold,
        "parity": parity.summary().to_dict(),
        "float_size": artifact.float_size,
    }
    # Validated now, as a release would be, so a draft that cannot become a manifest fails here.
    manifest_from_dict({**body, "release": 1, "key_id": "0" * 16})
    return body


def manifest_body(record: ModelVersion) -> dict[str, Any]:
    """A registry row's manifest without what a release adds (works for drafts and releases)."""
    return {k: v for k, v in record.manifest.items() if k not in UNSIGNED_FIELDS}


def chunk_count(record: ModelVersion) -> int:
    return int(record.manifest["chunks"]["count"])


def sign_release(record: ModelVersion, *, release: int, key: SigningKey) -> Manifest:
    """The signed manifest of ``record`` as release ``release`` of its name."""
    return key.sign(manifest_from_dict({**manifest_body(record), "release": release,
                                        "key_id": key.key_id}))


def sign_variant(variant: ModelVariant, *, release: int, key: SigningKey) -> Manifest:
    """The signed manifest of a version's ``variant``, as the version's release ``release``:
    its own quantization, size, hashes and parity, under the same signature rules."""
    body = {k: v for k, v in variant.manifest.items() if k not in UNSIGNED_FIELDS}
    return key.sign(manifest_from_dict({**body, "release": release, "key_id": key.key_id}))


def variants_of(session: Session, record: ModelVersion) -> list[ModelVariant]:
    """The other variants ``record`` keeps (issue 12), in quantization order."""
    if record.id is None:
        return []
    return list(session.exec(select(ModelVariant).where(ModelVariant.model_id == record.id)
                             .order_by(ModelVariant.quantization)))


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
    session: Session, artifact: ModelArtifact, *, name: str, chunk_size: int,
    training: dict[str, Any] | None = None, training_job_id: int | None = None,
) -> ModelVersion:
    """Store a new draft version of ``name`` with its (unsigned) manifest; commits."""
    validate_model_name(name)
    version = next_version(session, name)
    manifest = build_manifest(artifact, name=name, version=version, chunk_size=chunk_size)
    parity = _jsonable(artifact.parity)
    parity["passed"] = artifact.parity.passed
    record = ModelVersion(
        name=name,
        version=version,
        status=ModelStatus.DRAFT,
        created_at=manifest["created_at"],
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
        sha256=manifest["sha256"],
        parity=parity,
        parity_passed=artifact.parity.passed,
        parity_failure=artifact.parity.failure_reason(),
        validation=_jsonable(artifact.validation),
        extra=_jsonable(artifact.extra),
        key_id="",
        manifest=manifest,
        tflite=artifact.tflite,
        training_job_id=training_job_id,
    )
    session.add(record)
    session.flush()
    assert record.id is not None
    for quantization, variant in sorted(artifact.variants.items()):
        if not variant.parity.passed:  # only what passed the gate is ever signed
            continue
        body = build_manifest(artifact, name=name, version=version, chunk_size=chunk_size,
                              created_at=manifest["created_at"], variant=variant)
        variant_parity = _jsonable(variant.parity)
        variant_parity["passed"] = variant.parity.passed
        session.add(ModelVariant(model_id=record.id, quantization=quantization,
                                 size_bytes=len(variant.tflite), sha256=body["sha256"],
                                 parity=variant_parity, manifest=body, tflite=variant.tflite))
    session.commit()
    session.refresh(record)
    return record

