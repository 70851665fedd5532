"""The wire messages between agents and hub: one frozen, versioned msgspec struct each.

Every message carries ``v`` (the schema version) and ``device_id``. A payload whose ``v`` this
build does not know is refused with :class:`MessageError` naming the version: an unknown
version is never guessed at. Use :func:`encode` / :func:`decode` at the boundary.

msgspec rather than pydantic (the brief's choice): the agent imports this module, and pydantic
costs a running agent about 15 MB of its 60 MB budget against msgspec's 2 MB (measured in
``bench/edge_daemon.py``). Decoding validates types and constraints strictly; building a message
in code runs only the cross-field checks, so code that turns outside input into a message goes
through :func:`from_dict`, which validates everything.

Delivery (schema version 2). Telemetry and anomalies of one device form two streams, each
numbered by ``seq`` from 0 within an ``epoch``: 16 random hex digits created with the device's
outbox and stored in it, so a device that loses its state starts a new epoch instead of
reusing old numbers. The hub stores each message once per (device_id, epoch, seq). A message
also carries ``floor``, the lowest seq of its stream the device still held when it sent it:
everything below the floor is either stored at the hub or was dropped by the device on
purpose (counted there), so a drop never stalls the acknowledgement. The hub answers with a
retained :class:`Ack` on the device's ``ack`` topic, at most one per ack interval per device,
computed from what is committed in its database: per stream, a ``watermark`` (every seq from
the floor up to it is stored) and ``top`` (the highest seq stored). The device keeps a message
until a watermark covers it, not just until the broker's PUBACK, and sends again what an
acknowledgement shows missing (see :mod:`edge_agent.telemetry.delivery`).
"""

from __future__ import annotations

import re
import secrets
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec

from shared.topics import DEVICE_ID_PATTERN, MODEL_NAME_PATTERN, VARIANT_PATTERN

__all__ = [
    "EPOCH_PATTERN",
    "MAX_BATCH_ROWS",
    "MAX_SEQ",
    "MAX_CHANNELS",
    "MAX_DRIFT_BYTES",
    "MAX_TRAINING_FEATURES",
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "Ack",
    "AnomalyEvent",
    "DeviceStatus",
    "Desired",
    "DriftBrief",
    "DriftChannel",
    "DriftScores",
    "DriftState",
    "DriftSummary",
    "Frozen",
    "Heartbeat",
    "HubStatus",
    "MessageError",
    "ModelRef",
    "ModelState",
    "Reported",
    "ReportedModel",
    "Status",
    "StreamAck",
    "TelemetryBatch",
    "TrainingStats",
    "VersionProbe",
    "WireMessage",
    "check_version",
    "decode",
    "describe_error",
    "encode",
    "from_dict",
    "new_epoch",
    "with_floor",
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


class TelemetryBatch(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Many readings of one device; a reading is one row of ``values`` at ``ts[i]``."""

    epoch: Epoch
    seq: Seq
    floor: Seq = 0  # lowest seq of the stream the sender still held; 0 claims nothing
    channels: Annotated[list[ChannelName], msgspec.Meta(min_length=1, max_length=MAX_CHANNELS)]
    ts: Annotated[list[EpochSeconds], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ROWS)]
    values: Annotated[list[list[Finite]], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ROWS)]

    def __post_init__(self) -> None:
        # The hub decodes thousands of these a second: the checks are written out here (the
        # same as WireMessage's and _check_floor's), and the rows' widths are compared in one
        # pass in C before a Python loop looks for the row that is wrong.
        if type(self.v) is not int or self.v != SCHEMA_VERSION:
            check_version(self.v, SCHEMA_VERSION, "schema version")
        if self.floor > self.seq:
            _check_floor(self.floor, self.seq)
        channels, values = self.channels, self.values
        width = len(channels)
        if len(set(channels)) != width:
            raise ValueError(f"channels {channels} contain duplicates")
        if len(self.ts) != len(values):
            raise ValueError(f"ts has {len(self.ts)} entries but values has {len(values)} rows")
        widths = set(map(len, values))
        if len(widths) != 1 or width not in widths:
            for i, row in enumerate(values):
                if len(row) != width:
                    raise ValueError(f"values row {i} has {len(row)} entries, expected {width}")

    @property
    def readings(self) -> int:
        return len(self.ts)


class AnomalyEvent(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A window the device's model scored above its threshold."""

    epoch: Epoch
    seq: Seq
    floor: Seq = 0  # as in TelemetryBatch, for the anomalies stream
    ts: tuple[EpochSeconds, EpochSeconds]  # first and last sample of the window
    score: Finite
    threshold: Finite
    model: ModelRef
    channels: Annotated[list[ChannelName], msgspec.Meta(max_length=MAX_CHANNELS)]
    detected_at: EpochSeconds

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_floor(self.floor, self.seq)
        if self.ts[1] < self.ts[0]:
            raise ValueError(f"window end {self.ts[1]} is before its start {self.ts[0]}")


def _check_floor(floor: int, seq: int) -> None:
    if floor > seq:
        raise ValueError(f"floor {floor} is above seq {seq}: a sender holds what it sends")


class StreamAck(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the hub has committed of one stream of one epoch."""

    watermark: Watermark = -1  # every seq from the device's floor up to here is stored
    top: Watermark = -1  # the highest seq stored (above the watermark when there is a gap)

    def __post_init__(self) -> None:
        if self.top < self.watermark:
            raise ValueError(f"top {self.top} is below the watermark {self.watermark}")


class Ack(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Hub -> device, retained on the device's ``ack`` topic: what of the device's ``epoch``
    is committed in the hub's database. A device deletes what a watermark covers; a message
    below ``top`` that is not covered went missing on the way and is sent again. ``drift`` is
    left out while the device has sent no drift summary, so agents that never send one (and
    builds from before that stream) read every acknowledgement as before."""

    omit_when_none: ClassVar[tuple[str, ...]] = ("drift",)

    epoch: Epoch
    telemetry: StreamAck = msgspec.field(default_factory=StreamAck)
    anomalies: StreamAck = msgspec.field(default_factory=StreamAck)
    drift: StreamAck | None = None
    at: EpochSeconds


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class AgentRuntime(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Which TFLite runtime an agent runs models on (issue 12): the package (``litert``,
    ``tflite-runtime``, ...), its version, and whether its XNNPACK delegate takes int8 graphs
    (tflite-runtime 2.14 runs int8 on its builtin kernels: 73.6 us against 5.1 us float32 per
    window in bench/edge.py's legacy row)."""

    package: Annotated[str, msgspec.Meta(max_length=64)]
    version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    xnnpack_int8: bool


class Status(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Retained online/offline record; the offline one is also the agent's last will.

    ``runtime`` is left out when None: hubs of earlier builds refuse unknown fields, and
    statuses of agents from before it stay valid here."""

    omit_when_none: ClassVar[tuple[str, ...]] = ("runtime",)

    state: DeviceStatus
    at: EpochSeconds
    agent_version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    runtime: AgentRuntime | None = None


class HubStatus(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Retained birth (and will) of one hub process; ``device_id`` is the hub's client id.

    ``session`` is new on every connection; ``at`` is refreshed while the hub runs, so a
    record that stays online without refreshing belongs to a hub that is gone. Agents use it
    to tell an operator that no hub listens under their topic prefix; a second hub uses it to
    refuse to take over a running hub's client id. Delivery does not depend on it (see
    :class:`Ack`).
    """

    state: DeviceStatus
    session: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8,64}\Z")]
    at: EpochSeconds


class DriftState(StrEnum):
    WARMING = "warming"  # learning what normal looks like after a model change
    STABLE = "stable"
    DRIFT = "drift"  # a change detector fired and the change has not gone away


class DriftBrief(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The drift state in a heartbeat: since when, and on which channels."""

    state: DriftState
    since: EpochSeconds | None = None
    channels: Annotated[list[ChannelName], msgspec.Meta(max_length=MAX_CHANNELS + 1)] = (
        msgspec.field(default_factory=list))


class Heartbeat(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Periodic health of an agent."""

    omit_when_none: ClassVar[tuple[str, ...]] = ("drift",)  # hubs of earlier builds refuse it

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
    drift: DriftBrief | None = None


MAX_DRIFT_BYTES = 512 * 1024
MAX_TRAINING_FEATURES = 256  # window × channels of the statistics a device sends to train on
_MAX_SCATTER_CHARS = 4 * ((8 * MAX_TRAINING_FEATURES * (MAX_TRAINING_FEATURES + 1) // 2 + 2) // 3)
Optional = Finite | None


class DriftChannel(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One channel over a drift summary's period: moments, quantiles from the device's sketch,
    and how far its recent mean sits from the reference, in the reference's spreads."""

    name: ChannelName
    count: Count
    mean: Optional = None
    std: NonNegative | None = None
    min: Optional = None
    max: Optional = None
    q05: Optional = None
    q50: Optional = None
    q95: Optional = None
    shift: Optional = None
    drifting_since: EpochSeconds | None = None


class DriftScores(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The model's window scores over the period."""

    count: Count
    mean: Optional = None
    q50: Optional = None
    q95: Optional = None
    q99: Optional = None
    max: Optional = None
    shift: Optional = None  # log-score mean against the reference, in its spreads


class TrainingStats(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Sufficient statistics of a device's normal windows (``telemetry.upload = "summaries"``):
    count, mean and scatter (upper triangle, base64 of little-endian float64) of the windows
    flattened as ``window`` rows × ``channels``, and each channel's count, mean and M2."""

    window: Annotated[int, msgspec.Meta(ge=2, le=MAX_TRAINING_FEATURES)]
    stride: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    channels: Annotated[list[ChannelName], msgspec.Meta(min_length=1, max_length=MAX_CHANNELS)]
    windows: Annotated[int, msgspec.Meta(ge=10, le=MAX_COUNT)]
    mean: Annotated[list[Finite], msgspec.Meta(max_length=MAX_TRAINING_FEATURES)]
    scatter: Annotated[str, msgspec.Meta(max_length=_MAX_SCATTER_CHARS)]
    reading_count: Count
    reading_mean: Annotated[list[Finite], msgspec.Meta(max_length=MAX_CHANNELS)]
    reading_m2: Annotated[list[NonNegative], msgspec.Meta(max_length=MAX_CHANNELS)]

    def __post_init__(self) -> None:
        features = self.window * len(self.channels)
        if features > MAX_TRAINING_FEATURES:
            raise ValueError(f"window {self.window} × {len(self.channels)} channels is "
                             f"{features} values; at most {MAX_TRAINING_FEATURES}")
        if len(self.mean) != features:
            raise ValueError(f"mean has {len(self.mean)} values, expected {features}")
        width = len(self.channels)
        if len(self.reading_mean) != width or len(self.reading_m2) != width:
            raise ValueError(f"reading_mean and reading_m2 need one value per channel ({width})")
        expected = 4 * ((8 * features * (features + 1) // 2 + 2) // 3)
        if len(self.scatter) != expected:
            raise ValueError(f"scatter has {len(self.scatter)} characters; the base64 of a "
                             f"{features}×{features} upper triangle has {expected}")


class DriftSummary(WireMessage, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Statistics of what a device's model saw over a period, never readings: per-channel
    moments and quantiles, the score distribution, the anomaly rate against the reference
    (the first windows after the model was installed), and the change detectors' state.
    A durable stream like anomalies (``epoch``/``seq``/``floor``, acknowledged by the hub)."""

    max_bytes: ClassVar[int] = MAX_DRIFT_BYTES

    epoch: Epoch
    seq: Seq
    floor: Seq = 0
    start: EpochSeconds  # device time of the period's first and last reading
    end: EpochSeconds
    model: ModelRef | None = None
    state: DriftState
    since: EpochSeconds | None = None  # when the current state began (drift: its detection)
    drifting: Annotated[list[ChannelName], msgspec.Meta(max_length=MAX_CHANNELS + 1)] = (
        msgspec.field(default_factory=list))
    detections: Count = 0  # changes detected in the period
    readings: Count = 0
    windows: Count = 0
    anomalies: Count = 0  # windows over the threshold
    baseline_windows: Count = 0  # of the reference period, and how many were over it
    baseline_anomalies: Count = 0
    channels: Annotated[list[DriftChannel], msgspec.Meta(max_length=MAX_CHANNELS)] = (
        msgspec.field(default_factory=list))
    score: DriftScores | None = None
    training: TrainingStats | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_floor(self.floor, self.seq)
        if self.end < self.start:
            raise ValueError(f"period end {self.end} is before its start {self.start}")
        if self.anomalies > self.windows:
            raise ValueError(f"anomalies {self.anomalies} exceed windows {self.windows}")
        if self.baseline_anomalies > self.baseline_windows:
            raise ValueError(f"baseline_anomalies {self.baseline_anomalies} exceed "
                             f"baseline_windows {self.baseline_windows}")


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
    rollout_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)] | None = None


M = TypeVar("M", bound=Frozen)


class VersionProbe(msgspec.Struct):
    """Reads only ``v`` of a payload, to name an unknown version before anything else."""

    v: Any = None


def encode(message: Frozen) -> bytes:
    """Serialise a message to its JSON payload (fields a newer build added are left out while
    they are None, where the message says so: readers of an older build refuse them)."""
    optional: tuple[str, ...] = getattr(message, "omit_when_none", ())
    if optional and any(getattr(message, name) is None for name in optional):
        data = msgspec.to_builtins(message)
        for name in optional:
            if data.get(name) is None:
                data.pop(name, None)
        return msgspec.json.encode(data)
    return msgspec.json.encode(message)


def with_floor(payload: bytes, floor: int) -> bytes:
    """A telemetry or anomaly payload with its ``floor`` set as the sender sends it (the
    outbox stores a message once, and the lowest seq held changes while it waits). Values
    are copied as raw JSON (or MessagePack, :mod:`shared.packed`), not parsed again."""
    from shared.packed import is_msgpack, with_floor_packed  # it imports this module

    if is_msgpack(payload):
        return with_floor_packed(payload, floor)
    fields = msgspec.json.decode(payload, type=dict[str, msgspec.Raw])
    fields["floor"] = msgspec.Raw(str(int(floor)).encode())
    return msgspec.json.encode(fields)


def decode(cls: type[M], payload: bytes | str) -> M:
    """Parse and validate a payload as ``cls``, or raise :class:`MessageError` saying why."""
    size = len(payload)
    limit = min(MAX_PAYLOAD_BYTES, getattr(cls, "max_bytes", MAX_PAYLOAD_BYTES))
    if size > limit:
        raise MessageError(
            f"{cls.__name__}: payload of {size} bytes exceeds the limit of {limit}"
        )
    try:
        return msgspec.json.decode(payload, type=cls)
    except msgspec.ValidationError as exc:
        _refuse_unknown_version(cls, payload)
        raise MessageError(f"{cls.__name__}: {describe_error(exc)}") from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"{cls.__name__}: Invalid JSON: {_json_problem(exc, payload)}") from None
    except UnicodeDecodeError as exc:  # msgspec raises it for a key that is not UTF-8
        raise MessageError(f"{cls.__name__}: Invalid JSON: a string is not UTF-8 "
                           f"({exc.reason})") from None


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
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
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
