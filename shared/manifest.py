"""The signed model manifest: everything an agent needs to fetch, check and run a model.

The signature covers the canonical JSON of every field but ``signature`` itself
(:func:`canonical_bytes`), so any change to any field breaks it.

Schema v2 added ``release``: a counter per model name that the hub increments for every signed
release of that name (a first publication, or a hub-decided rollback that re-releases an older
version's content). An agent refuses a manifest whose ``release`` is lower than the highest it
has installed for that name, so an old signed manifest cannot be replayed to downgrade it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec

from shared.codec import sha256_hex
from shared.messages import (
    Finite,
    Frozen,
    ModelName,
    Sha256Hex,
    check_version,
    describe_error,
)
from shared.wire_codec import unknown_version

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
    "manifest_from_dict",
    "parse_manifest",
]

MANIFEST_SCHEMA_VERSION = 2  # v2: `release` (anti-rollback counter)
MAX_MANIFEST_BYTES = 256 * 1024

Positive = Annotated[int, msgspec.Meta(ge=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class ManifestError(ValueError):
    """A manifest that cannot be parsed or does not hold together."""


class Quantization(StrEnum):
    INT8 = "int8"
    FLOAT16 = "float16"
    DYNAMIC = "dynamic"
    FLOAT32 = "float32"


class ChunkTable(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    count: Positive
    sha256: list[Sha256Hex]

    @classmethod
    def of(cls, chunks: Sequence[bytes]) -> ChunkTable:
        """The table of ``chunks``, as :func:`shared.codec.split` cut them."""
        return cls(count=len(chunks), sha256=[sha256_hex(c) for c in chunks])

    def __post_init__(self) -> None:
        if len(self.sha256) != self.count:
            raise ValueError(
                f"chunks.count is {self.count} but {len(self.sha256)} hashes are listed"
            )


class InputSpec(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The model's input: ``window`` consecutive readings of ``channels``, flattened or not."""

    window: Annotated[int, msgspec.Meta(ge=1, le=4096)]
    channels: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]],
        msgspec.Meta(min_length=1, max_length=64),
    ]
    dtype: Literal["float32", "int8", "uint8"] = "float32"
    layout: Literal["flat", "sequence"] = "flat"  # (1, window*channels) or (1, window, channels)
    stride: Positive = 1  # readings between two scored windows


class Normalization(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-channel ``(x - center) / scale``: z-score (mean/std) or min-max (min/range)."""

    method: Literal["zscore", "minmax"]
    center: list[Finite]
    scale: list[PositiveFinite]


PositiveFinite = Annotated[float, msgspec.Meta(gt=0, le=1.7976931348623157e308)]
ChannelScale = Annotated[list[PositiveFinite], msgspec.Meta(min_length=1, max_length=64)]


class ScoreSpec(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a window's reconstruction becomes one number.

    Without ``channel_scale`` the score is the mean error over every value of the window. With
    it, each channel's mean error over the window is divided by its scale (the channel's typical
    error on held-out windows of normal operation) and the score is the largest of these: a
    fault on one channel of eight is not averaged away by the seven that are fine.
    ``channel_scale`` is left out of the manifest when it is not set, so manifests that do not
    use it keep their bytes (and their signatures) and agents that predate it still take them."""

    method: Literal["mse", "mae"] = "mse"
    smoothing: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1  # mean of the last n scores
    channel_scale: ChannelScale | None = None


Error = Annotated[float, msgspec.Meta(ge=0, le=1.7976931348623157e308)]


class ParitySummary(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the quantization gate measured on held-out windows."""

    decision_agreement: Annotated[float, msgspec.Meta(ge=0, le=1)]
    windows: Count
    score_correlation: Annotated[float, msgspec.Meta(ge=-1, le=1)] | None = None
    max_score_error: Error | None = None
    mean_score_error: Error | None = None


class Manifest(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    v: int = MANIFEST_SCHEMA_VERSION
    name: ModelName
    version: Positive
    release: Positive  # per model name; the hub increments it for every signed release
    created_at: Finite
    format: Literal["tflite"] = "tflite"
    quantization: Quantization
    size: Positive
    sha256: Sha256Hex
    chunk_size: Annotated[int, msgspec.Meta(ge=1024, le=8 * 1024 * 1024)]
    chunks: ChunkTable
    input: InputSpec
    normalization: Normalization
    score: ScoreSpec
    threshold: Finite
    parity: ParitySummary
    float_size: Positive
    key_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8,64}\Z")]
    signature: Annotated[str, msgspec.Meta(max_length=256)] = ""

    def __post_init__(self) -> None:
        check_version(self.v, MANIFEST_SCHEMA_VERSION, "manifest version")
        n = len(self.input.channels)
        if len(self.normalization.center) != n or len(self.normalization.scale) != n:
            raise ValueError(
                f"normalization has {len(self.normalization.center)} centers and "
                f"{len(self.normalization.scale)} scales for {n} channels"
            )
        if self.score.channel_scale is not None and len(self.score.channel_scale) != n:
            raise ValueError(
                f"score.channel_scale has {len(self.score.channel_scale)} scales for {n} channels"
            )
        expected = -(-self.size // self.chunk_size)
        if self.chunks.count != expected:
            raise ValueError(
                f"chunks.count is {self.chunks.count} but size {self.size} in chunks of "
                f"{self.chunk_size} needs {expected}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if data["score"]["channel_scale"] is None:
            del data["score"]["channel_scale"]  # see ScoreSpec
        return data

    def unsigned(self) -> dict[str, Any]:
        data = self.to_dict()
        data.pop("signature")
        return data

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()


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
        return msgspec.json.decode(payload, type=Manifest)
    except msgspec.ValidationError as exc:
        _refuse_unknown_version(payload)
        raise ManifestError(f"manifest field {describe_error(exc)}") from None
    except msgspec.DecodeError as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec raises it for a key that is not UTF-8
        raise ManifestError(f"manifest is not valid JSON: a string is not UTF-8 "
                            f"({exc.reason})") from None


def manifest_from_dict(data: Any) -> Manifest:
    """A manifest from already-parsed data (e.g. the registry's JSON column), validated."""
    try:
        return msgspec.convert(data, type=Manifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"manifest field {describe_error(exc)}") from None


def _refuse_unknown_version(payload: bytes | str) -> None:
    reason = unknown_version(payload, MANIFEST_SCHEMA_VERSION, "manifest version")
    if reason is not None:
        raise ManifestError(f"manifest field v: {reason}")
