"""Table rows to response bodies."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import func
from sqlmodel import Session, col, select

from cloud_hub.api.schemas import (
    DeviceConflictPublic,
    DevicePublic,
    ModelDetail,
    ModelSummary,
    RuntimePreference,
    TrainingJobPublic,
)
from cloud_hub.core.states import TrainingStage
from cloud_hub.db.registry_tables import ModelRelease, ModelVersion, TrainingJob
from cloud_hub.db.tables import Device, DeviceConflict
from cloud_hub.registry.records import variants_of
from cloud_hub.rollouts.variant import choose_variant
from shared.messages import AgentRuntime

__all__ = ["SUMMARY_COLUMNS", "device_public", "job_public", "model_detail", "model_summaries"]


def _ref(name: str | None, version: int | None) -> dict[str, object] | None:
    return None if name is None or version is None else {"name": name, "version": version}


def _prefers(runtime: dict[str, Any] | None) -> RuntimePreference | None:
    """Which variant of a model runs fastest on the runtime the device reported, and why."""
    if runtime is None:
        return None
    try:
        reported = msgspec.convert(runtime, AgentRuntime)
    except msgspec.ValidationError:
        return None
    choice = choose_variant(reported, ("int8", "float32"))
    return None if choice is None else RuntimePreference(quantization=choice[0], reason=choice[1])


def _same_variant(d: Device) -> bool:
    # agents of earlier builds do not report a variant: the version decides there
    return not d.desired_variant or not d.active_variant or d.desired_variant == d.active_variant


def device_public(d: Device, conflict: DeviceConflict | None = None) -> DevicePublic:
    active = _ref(d.active_name, d.active_version)
    if active is not None and d.active_sha256:
        active["sha256"] = d.active_sha256
    if active is not None and d.active_variant:
        active["variant"] = d.active_variant
    desired = _ref(d.desired_name, d.desired_version)
    if desired is not None and d.desired_variant:  # which variant it was sent, and why
        desired["variant"] = d.desired_variant
        desired["variant_reason"] = d.desired_variant_reason
    return DevicePublic(
        device_id=d.device_id, online=d.online, last_seen=d.last_seen, status_at=d.status_at,
        agent_version=d.agent_version, active_model=active, desired_model=desired,
        reported_model=_ref(d.reported_name, d.reported_version),
        reported_state=d.reported_state, reported_error=d.reported_error, tags=list(d.tags or []),
        group=d.group, telemetry_readings=d.telemetry_readings,
        telemetry_batches=d.telemetry_batches, anomalies=d.anomalies, heartbeat=d.heartbeat,
        runtime=d.runtime, runtime_prefers=_prefers(d.runtime),
        in_sync=desired is None or ((d.active_name, d.active_version) == (
            d.desired_name, d.desired_version) and _same_variant(d)),
        conflict=None if conflict is None else DeviceConflictPublic(
            kind=conflict.kind, detail=conflict.detail, epochs=list(conflict.epochs),
            first_at=conflict.first_at, last_at=conflict.last_at, count=conflict.count),
    )


_PROGRESS_DEFAULTS = {"stage": TrainingStage.QUEUED, "epoch": 0, "epochs": 0, "loss": None,
                      "val_loss": None, "fraction": 0.0}


def job_public(job: TrainingJob) -> TrainingJobPublic:
    assert job.id is not None
    return TrainingJobPublic(
        id=job.id, name=job.name, status=job.status,
        progress={**_PROGRESS_DEFAULTS, **(job.progress or {})},
        error=job.error, model=_ref(job.model_name, job.model_version), request=job.request,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        cancel_requested_at=job.cancel_requested_at,
    )


def running_devices(session: Session, m: ModelVersion) -> list[str]:
    stmt = select(Device.device_id).where(
        Device.active_name == m.name, Device.active_version == m.version
    ).order_by(Device.device_id)
    return list(session.exec(stmt))


def _running_count(session: Session, m: ModelVersion) -> int:
    return int(session.exec(
        select(func.count()).select_from(Device).where(
            Device.active_name == m.name, Device.active_version == m.version)
    ).one())


def _summary_fields(m: ModelVersion, running: int, release: int | None) -> dict[str, object]:
    return {
        "name": m.name, "version": m.version, "status": m.status, "family": m.family,
        "quantization": m.quantization, "channels": m.channels, "size_bytes": m.size_bytes,
        "float_size_bytes": m.float_size_bytes, "threshold": m.threshold,
        "decision_agreement": m.parity.get("decision_agreement"),
        "parity_passed": m.parity_passed, "created_at": m.created_at,
        "published_at": m.published_at, "devices_running": running, "release": release,
    }


# What a summary reads: no model bytes, no manifest, no training record.
SUMMARY_COLUMNS = ("name", "version", "status", "family", "quantization", "channels", "size_bytes",
                   "float_size_bytes", "threshold", "parity", "parity_passed", "created_at",
                   "published_at")


def model_summaries(session: Session, models: list[ModelVersion]) -> list[ModelSummary]:
    """Summaries of a page of models, with one query for the devices running each."""
    names = sorted({m.name for m in models})
    running: dict[tuple[str, int], int] = {}
    if names:
        stmt = (select(Device.active_name, Device.active_version, func.count())
                .where(col(Device.active_name).in_(names))
                .group_by(col(Device.active_name), col(Device.active_version)))
        running = {(n, v): int(c) for n, v, c in session.exec(stmt) if n and v}
    releases = latest_releases(session, names)
    return [ModelSummary.model_validate(_summary_fields(
        m, running.get((m.name, m.version), 0), releases.get((m.name, m.version))))
        for m in models]


def latest_releases(session: Session, names: list[str]) -> dict[tuple[str, int], int]:
    """(name, version) -> the number of its latest signed release (drafts have none)."""
    if not names:
        return {}
    stmt = (select(ModelRelease.name, ModelRelease.version, func.max(ModelRelease.release))
            .where(col(ModelRelease.name).in_(names))
            .group_by(col(ModelRelease.name), col(ModelRelease.version)))
    return {(n, v): int(r) for n, v, r in session.exec(stmt)}


def model_detail(session: Session, m: ModelVersion) -> ModelDetail:
    return ModelDetail.model_validate({
        **_summary_fields(m, _running_count(session, m),
                          m.manifest.get("release") if m.key_id else None),
        "spec": m.spec, "training": m.training,
        "normalization": m.normalization, "input": m.input, "score": m.score,
        "threshold_method": m.threshold_method, "sha256": m.sha256, "parity": m.parity,
        "parity_failure": m.parity_failure, "validation": m.validation, "extra": m.extra,
        "key_id": m.key_id, "retired_at": m.retired_at, "manifest": m.manifest,
        "devices": running_devices(session, m),
        "variants": [{"quantization": v.quantization, "size_bytes": v.size_bytes,
                      "sha256": v.sha256,
                      "decision_agreement": v.parity.get("decision_agreement"),
                      "manifest": v.manifest} for v in variants_of(session, m)],
    })
