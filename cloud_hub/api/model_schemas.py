"""Response bodies of the model registry's routes: a version's summary and detail, and two
versions compared."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cloud_hub.core.states import ModelStatus

__all__ = ["ModelComparison", "ModelDetail", "ModelSummary"]


class ModelSummary(BaseModel):
    name: str
    version: int
    status: ModelStatus
    family: str
    quantization: str
    channels: list[str]
    size_bytes: int
    float_size_bytes: int
    threshold: float
    decision_agreement: float | None
    parity_passed: bool
    created_at: float
    published_at: float | None
    devices_running: int
    release: int | None = Field(default=None, description="its latest signed release number "
                                "(none while a draft: only a release is signed)")


class ModelDetail(ModelSummary):
    spec: dict[str, Any]
    training: dict[str, Any]
    normalization: dict[str, Any]
    input: dict[str, Any]
    score: dict[str, Any]
    threshold_method: str
    sha256: str
    parity: dict[str, Any]
    parity_failure: str | None
    validation: dict[str, Any]
    extra: dict[str, Any]
    key_id: str
    retired_at: float | None
    manifest: dict[str, Any]
    devices: list[str] = Field(description="devices whose `reported` says they run it")
    variants: list[dict[str, Any]] = Field(
        default_factory=list, description="the other variants this version keeps (quantization "
        "auto): quantization, size_bytes, sha256, decision_agreement, and its signed manifest")


class ModelComparison(BaseModel):
    a: dict[str, Any] = Field(description="figures of the first version")
    b: dict[str, Any] = Field(description="figures of the second version")
    differs: list[str] = Field(description="figures that differ")
    spec_diff: dict[str, list[Any]] = Field(description="spec field -> [a, b]")
