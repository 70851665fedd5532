"""The wire messages between agents and hub: one frozen, versioned msgspec struct each.

Every message carries ``v`` (the schema version) and ``device_id``. A payload whose ``v`` this
build does not know is refused with :class:`MessageError` naming the version: an unknown
version is never guessed at. Use :func:`encode` / :func:`decode` at the boundary.

msgspec rather than pydantic (the brief's choice): the agent imports this module, and pydantic
costs a running agent about 15 MB of its 60 MB budget against msgspec's 2 MB (measured in
``bench/edge_daemon.py``). Decoding validates types and constraints strictly; building a message
in code runs only the cross-field checks, so code that turns outside input into a message goes
through :func:`from_dict`, which validates everything.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import msgspec

from shared.topics import DEVICE_ID_PATTERN, MODEL_NAME_PATTERN

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_CHANNELS",
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "AnomalyEvent",
    "DeviceStatus",
    "Desired",
    "Frozen",
    "Heartbeat",
    "HubStatus",
    "MessageError",
    "ModelRef",
    "ModelState",
    "Reported",
    "ReportedModel",
    "Status",
    "TelemetryBatch",
    "VersionProbe",
    "WireMessage",
    "check_version",
    "decode",
    "describe_error",
    "encode",
    "from_dict",
]

SCHEMA_VERSION = 1
MAX_BATCH_ROWS = 10_000
MAX_CHANNELS = 64
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
_MAX_FLOAT = 1.7976931348623157e308  # bounds that refuse inf; NaN fails every comparison

DeviceId = Annotated[str, msgspec.Meta(pattern=rf"^{DEVICE_ID_PATTERN}$")]
ModelName = Annotated[str, msgspec.Meta(pattern=rf"^{MODEL_NAME_PATTERN}$")]
ChannelName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Finite = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]
EpochSeconds = Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Seq = Count


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


class ModelRef(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A model version by name."""

    name: ModelName
    version: Annotated[int, msgspec.Meta(ge=1)]


class TelemetryBatch(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Many readings of one device; a reading is one row of ``values`` at ``ts[i]``."""

    seq: Seq
    channels: Annotated[list[ChannelName], msgspec.Meta(min_length=1, max_length=MAX_CHANNELS)]
    ts: Annotated[list[EpochSeconds], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ROWS)]
    values: Annotated[list[list[Finite]], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ROWS)]

    def __post_init__(self) -> None:
        super().__post_init__()
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

    @property
    def readings(self) -> int:
        return len(self.ts)


class AnomalyEvent(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A window the device's model scored above its threshold."""

    seq: Seq
    ts: tuple[EpochSeconds, EpochSeconds]  # first and last sample of the window
    score: Finite
    threshold: Finite
    model: ModelRef
    channels: Annotated[list[ChannelName], msgspec.Meta(max_length=MAX_CHANNELS)]
    detected_at: EpochSeconds

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ts[1] < self.ts[0]:
            raise ValueError(f"window end {self.ts[1]} is before its start {self.ts[0]}")


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Status(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Retained online/offline record; the offline one is also the agent's last will."""

    state: DeviceStatus
    at: EpochSeconds
    agent_version: Annotated[str, msgspec.Meta(max_length=64)] = ""


class HubStatus(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Retained birth (and will) of one hub process; ``device_id`` is the hub's client id.

    ``session`` is new on every connection. An agent that sees a session it has not seen
    before, after its own link or the hub was down, sends again what the broker acknowledged
    around that outage: a broker that came back without the hub's session (a crash between two
    saves, a fail-over, shared subscriptions, which mosquitto 2.0 does not restore) acknowledged
    messages that reached nobody. The hub dedups on (device_id, seq).
    """

    state: DeviceStatus
    session: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8,64}$")]
    at: EpochSeconds


class Heartbeat(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Periodic health of an agent."""

    at: EpochSeconds
    uptime_s: NonNegative
    rss_bytes: Count
    inference_us_p50: NonNegative | None = None
    inference_us_p99: NonNegative | None = None
    outbox_depth: Count
    oldest_unsent_age_s: NonNegative
    drops: Count
    reconnects: Count = 0
    bad_readings: Count = 0


class ModelState(StrEnum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    SHADOW = "shadow"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class ReportedModel(ModelRef, frozen=True, forbid_unknown_fields=True, kw_only=True):
    sha256: Sha256Hex | None = None


class Reported(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The model state a device really has (retained). ``model`` is what ``state`` is about."""

    model: ReportedModel | None
    state: ModelState
    error: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    since: EpochSeconds
    active: ReportedModel | None = None
    threshold: Finite | None = None


class Desired(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the hub wants a device to run (retained). ``model`` None means: run nothing new."""

    model: ModelRef | None
    config: dict[str, float | int | str | bool] = msgspec.field(default_factory=dict)
    issued_at: EpochSeconds
    rollout_id: int | None = None


M = TypeVar("M", bound=Frozen)


class VersionProbe(msgspec.Struct):
    """Reads only ``v`` of a payload, to name an unknown version before anything else."""

    v: Any = None


def encode(message: Frozen) -> bytes:
    """Serialise a message to its JSON payload."""
    return msgspec.json.encode(message)


def decode(cls: type[M], payload: bytes | str) -> M:
    """Parse and validate a payload as ``cls``, or raise :class:`MessageError` saying why."""
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise MessageError(
            f"{cls.__name__}: payload of {size} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}"
        )
    try:
        return msgspec.json.decode(payload, type=cls)
    except msgspec.ValidationError as exc:
        _refuse_unknown_version(cls, payload)
        raise MessageError(f"{cls.__name__}: {describe_error(exc)}") from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"{cls.__name__}: Invalid JSON: {_json_problem(exc, payload)}") from None


def from_dict(cls: type[M], data: Any) -> M:
    """Validate already-parsed data (a dict from JSON, TOML or code) as ``cls``, strictly."""
    try:
        return msgspec.convert(data, type=cls)
    except msgspec.ValidationError as exc:
        raise MessageError(f"{cls.__name__}: {describe_error(exc)}") from None


def _refuse_unknown_version(cls: type[Frozen], payload: bytes | str) -> None:
    # A newer schema may differ in any field: name the version, not the first field that differs.
    if not issubclass(cls, WireMessage):
        return
    try:
        v = msgspec.json.decode(payload, type=VersionProbe).v
    except (msgspec.ValidationError, msgspec.DecodeError):
        return
    try:
        check_version(v, SCHEMA_VERSION, "schema version")
    except ValueError as exc:
        raise MessageError(f"{cls.__name__}: {exc}") from None


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def describe_error(exc: msgspec.ValidationError) -> str:
    """msgspec's message with its ``$.a[0].b`` location turned into ``a.0.b: …`` first."""
    text = str(exc)
    match = _AT.search(text)
    if text.startswith("Object contains unknown field"):
        name = text.split("`")[1]
        where = _dotted(match.group("path")) if match else ""
        return f"{where + '.' if where else ''}{name}: unknown field (extra fields are refused)"
    if match is None:
        return f"payload: {text}"
    return f"{_dotted(match.group('path')) or 'payload'}: {text[: match.start()]}"


def _dotted(path: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".").replace("[...]", ".*")


def _json_problem(exc: msgspec.DecodeError, payload: bytes | str) -> str:
    text = str(exc)
    match = re.search(r"\(byte (\d+)\)", text)
    if match:
        at = int(match.group(1))
        raw = payload.encode() if isinstance(payload, str) else payload
        if raw[at : at + 3] in (b"NaN", b"Inf", b"-In"):
            return f"non-finite number at byte {at}: every value must be finite"
    return text
