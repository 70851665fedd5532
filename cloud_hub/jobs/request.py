"""What a training job is asked to train on: :class:`TrainingRequest`, as the API, the CSV
upload and the retraining loop build it, the job row stores it and the runner reads it.

A request trains on stored telemetry (devices, channels, time range), on an uploaded CSV
(``upload``), or on the devices' pooled federated statistics (``federated``). ``spec`` holds the
:class:`~cloud_hub.training.artifact.TrainingSpec` fields as asked, over the defaults (so a
stored request says what was asked, not what the defaults were then); their names are checked
when the request is made, their values when the job builds the spec.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloud_hub.training.artifact import TrainingSpec
from shared.manifest import Quantization

__all__ = ["FederatedSet", "TrainingRequest", "UploadedSet", "spec_from_dict"]


def spec_from_dict(data: dict[str, Any]) -> TrainingSpec:
    known = {f.name for f in fields(TrainingSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"spec has unknown field(s) {unknown}; known: {sorted(known)}")
    values = dict(data)
    if "quantization" in values and values["quantization"] != "auto":
        values["quantization"] = Quantization(values["quantization"])
    return TrainingSpec(**values)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UploadedSet(_Frozen):
    """A CSV uploaded for training: ``file`` names its row in ``training_uploads`` (or, for a
    job submitted before uploads moved into the database, its file in ``DATA_DIR/uploads``)."""

    file: str
    rows: int = Field(ge=1)
    channels: list[str] = Field(min_length=1)


class FederatedSet(_Frozen):
    """Drift summaries with training statistics of these devices, whose periods end between
    ``since`` and ``until`` (device time)."""

    devices: list[str] = Field(min_length=1)
    since: float | None = None
    until: float | None = None


class TrainingRequest(_Frozen):
    name: str | None = Field(default=None, description="the model name (also the job's)")
    devices: list[str] | None = Field(default=None, description="none: every enrolled device "
                                      "that sent telemetry")
    channels: list[str] | None = None
    since: float | None = None
    until: float | None = None
    device_since: dict[str, float] | None = Field(
        default=None, description="per device, a later start than since (a drifted device's "
                                  "readings from its drift on)")
    spec: dict[str, Any] = Field(default_factory=dict,
                                 description="TrainingSpec fields as asked, over the defaults")
    exclude_anomalies: bool = Field(
        default=False, description="leave out the readings in and next to stored anomaly events")
    min_segment_rows: int = Field(default=64, ge=1, description="with exclude_anomalies: "
                                  "normal runs shorter than this are left out too")
    upload: UploadedSet | None = None
    federated: FederatedSet | None = None

    @field_validator("spec")
    @classmethod
    def _known_spec_fields(cls, spec: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(TrainingSpec)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown TrainingSpec field(s) {unknown}")
        return spec

    @model_validator(mode="after")
    def _one_source(self) -> TrainingRequest:
        if self.upload is not None and self.federated is not None:
            raise ValueError("a training request takes an upload or federated statistics, "
                             "not both")
        return self

    def training_spec(self) -> TrainingSpec:
        """The spec to train with (raises ValueError naming a bad field)."""
        return spec_from_dict(self.spec)
