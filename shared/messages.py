"""The wire messages between agents and hub: one frozen, versioned pydantic model each.

Every message carries ``v`` (the schema version) and ``device_id``. A payload whose ``v`` this
build does not know is refused with :class:`MessageError` before anything else is looked at:
an unknown version is never guessed at. Use :func:`encode` / :func:`decode` at the boundary.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.topics import DEVICE_ID_PATTERN, MODEL_NAME_PATTERN

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_CHANNELS",
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "AnomalyEvent",
    "DeviceStatus",
    "Desired",
    "Heartbeat",
    "HubStatus",
    "MessageError",
    "ModelRef",
    "ModelState",
    "Reported",
    "ReportedModel",
    "Status",
    "TelemetryBatch",
    "WireMessage",
    "decode",
    "encode",
]

SCHEMA_VERSION = 1
MAX_BATCH_ROWS = 10_000
MAX_CHANNELS = 64
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024

DeviceId = Annotated[str, StringConstraints(pattern=rf"^{DEVICE_ID_PATTERN}$")]
ModelName = Annotated[str, StringConstraints(pattern=rf"^{MODEL_NAME_PATTERN}$")]
ChannelName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
EpochSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seq = Annotated[int, Field(ge=0)]


class MessageError(ValueError):
    """A payload that is not a valid message; the text says which field and why."""


class WireMessage(BaseModel):
    """Base of every message: frozen, strict about types, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: int = SCHEMA_VERSION
    device_id: DeviceId

    @field_validator("v", mode="before")
    @classmethod
    def _known_schema_version(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"schema version v={v!r} is not an integer")
        if v != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported schema version v={v}; this build understands v={SCHEMA_VERSION}"
            )
        return v


class ModelRef(BaseModel):
    """A model version by name."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: ModelName
    version: int = Field(ge=1)


class TelemetryBatch(WireMessage):
    """Many readings of one device; a reading is one row of ``values`` at ``ts[i]``."""

    seq: Seq
    channels: list[ChannelName] = Field(min_length=1, max_length=MAX_CHANNELS)
    ts: list[EpochSeconds] = Field(min_length=1, max_length=MAX_BATCH_ROWS)
    values: list[list[Annotated[float, Field(allow_inf_nan=False)]]] = Field(
        min_length=1, max_length=MAX_BATCH_ROWS
    )

    @model_validator(mode="after")
    def _rectangular(self) -> TelemetryBatch:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels {self.channels} contain duplicates")
        if len(self.ts) != len(self.values):
            raise ValueError(
                f"ts has {len(self.ts)} entries but values has {len(self.values)} rows"
            )
        width = len(self.channels)
        for i, row in enumerate(self.values):
            if len(row) != width:
                raise ValueError(f"values row {i} has {len(row)} entries, expected {width}")
        return self

    @property
    def readings(self) -> int:
        return len(self.ts)


class AnomalyEvent(WireMessage):
    """A window the device's model scored above its threshold."""

    seq: Seq
    ts: tuple[EpochSeconds, EpochSeconds]  # first and last sample of the window
    score: Annotated[float, Field(allow_inf_nan=False)]
    threshold: Annotated[float, Field(allow_inf_nan=False)]
    model: ModelRef
    channels: list[ChannelName] = Field(max_length=MAX_CHANNELS)
    detected_at: EpochSeconds

    @field_validator("ts")
    @classmethod
    def _ordered(cls, ts: tuple[float, float]) -> tuple[float, float]:
        if ts[1] < ts[0]:
            raise ValueError(f"window end {ts[1]} is before its start {ts[0]}")
        return ts


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Status(WireMessage):
    """Retained online/offline record; the offline one is also the agent's last will."""

    state: DeviceStatus = Field(strict=False)
    at: EpochSeconds
    agent_version: str = ""


class HubStatus(WireMessage):
    """Retained birth (and will) of one hub process; ``device_id`` is the hub's client id.

    ``session`` is new on every connection. An agent that sees a session it has not seen
    before, after its own link or the hub was down, sends again what the broker acknowledged
    around that outage: a broker restarted from persistence does not queue for the hub until
    the hub reconnects, so those messages may have reached nobody (the hub dedups by seq).
    """

    state: DeviceStatus = Field(strict=False)
    session: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8,64}$")]
    at: EpochSeconds


class Heartbeat(WireMessage):
    """Periodic health of an agent."""

    at: EpochSeconds
    uptime_s: float = Field(ge=0)
    rss_bytes: int = Field(ge=0)
    inference_us_p50: float | None = Field(default=None, ge=0)
    inference_us_p99: float | None = Field(default=None, ge=0)
    outbox_depth: int = Field(ge=0)
    oldest_unsent_age_s: float = Field(ge=0)
    drops: int = Field(ge=0)
    reconnects: int = Field(default=0, ge=0)
    bad_readings: int = Field(default=0, ge=0)


class ModelState(StrEnum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    SHADOW = "shadow"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class ReportedModel(ModelRef):
    sha256: Sha256Hex | None = None


class Reported(WireMessage):
    """The model state a device really has (retained). ``model`` is what ``state`` is about."""

    model: ReportedModel | None
    state: ModelState = Field(strict=False)
    error: str | None = Field(default=None, max_length=2000)
    since: EpochSeconds
    active: ReportedModel | None = None
    threshold: float | None = Field(default=None, allow_inf_nan=False)


class Desired(WireMessage):
    """What the hub wants a device to run (retained). ``model`` None means: run nothing new."""

    model: ModelRef | None
    config: dict[str, float | int | str | bool] = Field(default_factory=dict)
    issued_at: EpochSeconds
    rollout_id: int | None = None


M = TypeVar("M", bound=WireMessage)

_ENCODE_KW: dict[str, Any] = {"exclude_none": False}


def encode(message: WireMessage) -> bytes:
    """Serialise a message to its JSON payload."""
    return message.model_dump_json(**_ENCODE_KW).encode()


def decode(cls: type[M], payload: bytes | str) -> M:
    """Parse and validate a payload as ``cls``, or raise :class:`MessageError` saying why."""
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise MessageError(
            f"{cls.__name__}: payload of {size} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}"
        )
    try:
        return cls.model_validate_json(payload)
    except ValidationError as exc:
        raise MessageError(f"{cls.__name__}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        value = err.get("input")
        if isinstance(value, dict):
            shown = "{…}"
        elif isinstance(value, bytes | str):
            shown = f"{len(value)} bytes of text"
        else:
            shown = json.dumps(value, default=str)[:80]
        if isinstance(value, float) and not math.isfinite(value):
            shown = str(value)
        parts.append(f"{where}: {err['msg']} (got {shown})")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more error(s)")
    return "; ".join(parts)

