"""The building blocks of the wire messages: limits, field types, the versioned base structs,
the model reference and the error a bad payload raises. :mod:`shared.messages` re-exports them."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, TypeVar

import msgspec

from shared.topics import DEVICE_ID_PATTERN, MODEL_NAME_PATTERN, VARIANT_PATTERN

__all__ = [
    "EPOCH_PATTERN",
    "MAX_BATCH_ROWS",
    "MAX_CHANNELS",
    "MAX_COUNT",
    "MAX_PAYLOAD_BYTES",
    "MAX_SEQ",
    "MAX_VERSION",
    "SCHEMA_VERSION",
    "ChannelName",
    "Count",
    "DeviceId",
    "Epoch",
    "EpochSeconds",
    "Finite",
    "Frozen",
    "MessageError",
    "ModelName",
    "ModelRef",
    "NonNegative",
    "Seq",
    "Sha256Hex",
    "Watermark",
    "WireMessage",
    "check_floor",
    "check_version",
    "new_epoch",
]

SCHEMA_VERSION = 2
MAX_SEQ = 2**53 - 1  # exact in every JSON reader, and far beyond any device's life
MAX_COUNT = 2**63 - 1  # what a database's BIGINT holds
MAX_VERSION = 2**31 - 1  # model versions are INTEGER columns
EPOCH_PATTERN = r"^[0-9a-f]{16}\Z"
MAX_BATCH_ROWS = 10_000
MAX_CHANNELS = 64
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
_MAX_FLOAT = 1.7976931348623157e308  # bounds that refuse inf; NaN fails every comparison

# Patterns end in \Z, not $: Python's $ also matches before a final newline ("pump-1\n").
DeviceId = Annotated[str, msgspec.Meta(pattern=rf"^{DEVICE_ID_PATTERN}\Z")]
ModelName = Annotated[str, msgspec.Meta(pattern=rf"^{MODEL_NAME_PATTERN}\Z")]
ChannelName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
Finite = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]
EpochSeconds = Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
Watermark = Annotated[int, msgspec.Meta(ge=-1, le=MAX_SEQ)]  # -1: nothing yet
Epoch = Annotated[str, msgspec.Meta(pattern=EPOCH_PATTERN)]


def new_epoch() -> str:
    """A fresh stream epoch: 16 random lowercase hex digits."""
    return secrets.token_hex(8)


class MessageError(ValueError):
    """A payload that is not a valid message; the text says which field and why."""


class Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every wire shape: immutable, no unknown fields, keyword construction."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (enums as their values, tuples as lists)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data

    def replace(self: _S, **changes: Any) -> _S:
        """A copy with ``changes`` applied (cross-field checks run again)."""
        return msgspec.structs.replace(self, **changes)


_S = TypeVar("_S", bound=Frozen)


class WireMessage(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every message: ``v`` and ``device_id``."""

    v: int = SCHEMA_VERSION
    device_id: DeviceId

    def __post_init__(self) -> None:
        check_version(self.v, SCHEMA_VERSION, "schema version")


def check_version(v: Any, known: int, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what} v={v!r} is not an integer")
    if v != known:
        raise ValueError(f"unsupported {what} v={v}; this build understands v={known}")


def check_floor(floor: int, seq: int) -> None:
    """A message's ``floor`` (the lowest seq its sender still held) is never above its seq."""
    if floor > seq:
        raise ValueError(f"floor {floor} is above seq {seq}: a sender holds what it sends")


class ModelRef(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True,
               omit_defaults=True):
    """A model version by name, and which of its variants (issue 12).

    ``variant`` is a quantization (``int8``, ``float32``, ...). In ``desired`` it names the
    variant the device is to fetch (``models/{name}/{version}/variants/{variant}/…``); None, the
    version's published variant (``models/{name}/{version}/…``), which is all agents of earlier
    builds know. In ``reported`` it says which variant the device runs. Fields left at their
    default are not encoded (``omit_defaults``), so a ref without a variant is the very JSON
    earlier builds send and accept (they refuse unknown fields)."""

    name: ModelName
    version: Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION)]
    variant: Annotated[str, msgspec.Meta(pattern=rf"^{VARIANT_PATTERN}\Z")] | None = None
