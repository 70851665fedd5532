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

Import every message, type and function from this module; three parts live beside it and are
re-exported here: the building blocks (limits, field types, :class:`Frozen`, :class:`WireMessage`,
:class:`ModelRef`, :class:`MessageError`) in :mod:`shared.wire_base`, the drift stream
(:class:`DriftSummary`, :class:`DriftBrief`, :class:`TrainingStats`, ...) in
:mod:`shared.drift_messages`, and :func:`encode`, :func:`decode`, :func:`from_dict` and
:func:`describe_error` in :mod:`shared.wire_codec`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

import msgspec

from shared.drift_messages import (
    MAX_DRIFT_BYTES,
    MAX_TRAINING_FEATURES,
    DriftBrief,
    DriftChannel,
    DriftScores,
    DriftState,
    DriftSummary,
    TrainingStats,
)
from shared.wire_base import (
    EPOCH_PATTERN,
    MAX_BATCH_ROWS,
    MAX_CHANNELS,
    MAX_COUNT,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    MAX_VERSION,
    SCHEMA_VERSION,
    ChannelName,
    Count,
    DeviceId,
    Epoch,
    EpochSeconds,
    Finite,
    Frozen,
    MessageError,
    ModelName,
    ModelRef,
    NonNegative,
    Seq,
    Sha256Hex,
    Watermark,
    WireMessage,
    check_floor,
    check_version,
    new_epoch,
)
from shared.wire_codec import VersionProbe, decode, describe_error, encode, from_dict, with_floor

__all__ = [
    "EPOCH_PATTERN",
    "MAX_BATCH_ROWS",
    "MAX_SEQ",
    "MAX_CHANNELS",
    "MAX_DRIFT_BYTES",
    "MAX_TRAINING_FEATURES",
    "MAX_PAYLOAD_BYTES",
    "MAX_COUNT",
    "MAX_VERSION",
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
    "check_floor",
    "check_version",
    "decode",
    "describe_error",
    "encode",
    "from_dict",
    "new_epoch",
    "with_floor",
    # field types the other shared modules build their structs with
    "ChannelName",
    "Count",
    "DeviceId",
    "Epoch",
    "EpochSeconds",
    "Finite",
    "ModelName",
    "NonNegative",
    "Seq",
    "Sha256Hex",
    "Watermark",
]


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
        # same as WireMessage's and check_floor's), and the rows' widths are compared in one
        # pass in C before a Python loop looks for the row that is wrong.
        if type(self.v) is not int or self.v != SCHEMA_VERSION:
            check_version(self.v, SCHEMA_VERSION, "schema version")
        if self.floor > self.seq:
            check_floor(self.floor, self.seq)
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
        check_floor(self.floor, self.seq)
        if self.ts[1] < self.ts[0]:
            raise ValueError(f"window end {self.ts[1]} is before its start {self.ts[0]}")

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
