"""The signed model manifest: everything an agent needs to fetch, check and run a model.

The signature covers the canonical JSON of every field but ``signature`` itself
(:func:`canonical_bytes`), so any change to any field breaks it.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.topics import MODEL_NAME_PATTERN

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "ChunkTable",
    "InputSpec",
    "Manifest",
    "ManifestError",
    "Normalization",
    "ParitySummary",
    "Quantization",
    "ScoreSpec",
    "canonical_bytes",
    "parse_manifest",
]

MANIFEST_SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 256 * 1024

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class ManifestError(ValueError):
    """A manifest that cannot be parsed or does not hold together."""


class Quantization(StrEnum):
    INT8 = "int8"
    FLOAT16 = "float16"
    DYNAMIC = "dynamic"
    FLOAT32 = "float32"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ChunkTable(_Frozen):
    count: int = Field(ge=1)
    sha256: list[Sha256Hex]

    @model_validator(mode="after")
    def _count_matches(self) -> ChunkTable:
        if len(self.sha256) != self.count:
            raise ValueError(
                f"chunks.count is {self.count} but {len(self.sha256)} hashes are listed"
            )
        return self


class InputSpec(_Frozen):
    """The model's input: ``window`` consecutive readings of ``channels``, flattened or not."""

    window: int = Field(ge=1, le=4096)
    channels: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=64
    )
    dtype: Literal["float32", "int8", "uint8"] = "float32"
    layout: Literal["flat", "sequence"] = "flat"  # (1, window*channels) or (1, window, channels)
    stride: int = Field(default=1, ge=1)  # readings between two scored windows


class Normalization(_Frozen):
    """Per-channel ``(x - center) / scale``: z-score (mean/std) or min-max (min/range)."""

    method: Literal["zscore", "minmax"]
    center: list[Finite]
    scale: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]]


class ScoreSpec(_Frozen):
    """How a window's reconstruction becomes one number."""

    method: Literal["mse", "mae"] = "mse"
    smoothing: int = Field(default=1, ge=1, le=1000)  # mean of the last n window scores


class ParitySummary(_Frozen):
    """What the quantization gate measured on held-out windows."""

    decision_agreement: float = Field(ge=0, le=1)
    windows: int = Field(ge=0)
    score_correlation: float | None = Field(default=None, ge=-1, le=1)
    max_score_error: float | None = Field(default=None, ge=0)
    mean_score_error: float | None = Field(default=None, ge=0)


class Manifest(_Frozen):
    v: int = MANIFEST_SCHEMA_VERSION
    name: Annotated[str, StringConstraints(pattern=rf"^{MODEL_NAME_PATTERN}$")]
    version: int = Field(ge=1)
    created_at: Finite
    format: Literal["tflite"] = "tflite"
    quantization: Quantization = Field(strict=False)
    size: int = Field(ge=1)
    sha256: Sha256Hex
    chunk_size: int = Field(ge=1024, le=8 * 1024 * 1024)
    chunks: ChunkTable
    input: InputSpec
    normalization: Normalization
    score: ScoreSpec
    threshold: Finite
    parity: ParitySummary
    float_size: int = Field(ge=1)
    key_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8,64}$")]
    signature: str = ""

    @field_validator("v", mode="before")
    @classmethod
    def _known_version(cls, v: Any) -> Any:
        if v != MANIFEST_SCHEMA_VERSION:
            raise ValueError(
                f"unsupported manifest version v={v!r}; "
                f"this build understands v={MANIFEST_SCHEMA_VERSION}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = len(self.input.channels)
        if len(self.normalization.center) != n or len(self.normalization.scale) != n:
            raise ValueError(
                f"normalization has {len(self.normalization.center)} centers and "
                f"{len(self.normalization.scale)} scales for {n} channels"
            )
        expected = -(-self.size // self.chunk_size)
        if self.chunks.count != expected:
            raise ValueError(
                f"chunks.count is {self.chunks.count} but size {self.size} in chunks of "
                f"{self.chunk_size} needs {expected}"
            )
        return self

    def unsigned(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data.pop("signature")
        return data

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()


def canonical_bytes(manifest: Manifest) -> bytes:
    """The bytes the signature covers: every field but ``signature``, keys sorted, no spaces."""
    return json.dumps(
        manifest.unsigned(), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    ).encode()


def parse_manifest(payload: bytes | str) -> Manifest:
    """Validate a manifest payload (signature not checked here; see :mod:`shared.signing`)."""
    if len(payload) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest of {len(payload)} bytes exceeds {MAX_MANIFEST_BYTES}")
    try:
        return Manifest.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ManifestError(
            f"manifest field {where}: {first['msg']}"
            + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
        ) from None
