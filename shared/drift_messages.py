"""The drift stream's messages: a heartbeat's drift state and the periodic drift summary, with
the training statistics it may carry. :mod:`shared.messages` re-exports them."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

import msgspec

from shared.wire_base import (
    MAX_CHANNELS,
    MAX_COUNT,
    ChannelName,
    Count,
    Epoch,
    EpochSeconds,
    Finite,
    Frozen,
    ModelRef,
    NonNegative,
    Seq,
    WireMessage,
    check_floor,
)

__all__ = [
    "MAX_DRIFT_BYTES",
    "MAX_TRAINING_FEATURES",
    "DriftBrief",
    "DriftChannel",
    "DriftScores",
    "DriftState",
    "DriftSummary",
    "TrainingStats",
]

MAX_DRIFT_BYTES = 512 * 1024
MAX_TRAINING_FEATURES = 256  # window × channels of the statistics a device sends to train on
_MAX_SCATTER_CHARS = 4 * ((8 * MAX_TRAINING_FEATURES * (MAX_TRAINING_FEATURES + 1) // 2 + 2) // 3)
Optional = Finite | None


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
        check_floor(self.floor, self.seq)
        if self.end < self.start:
            raise ValueError(f"period end {self.end} is before its start {self.start}")
        if self.anomalies > self.windows:
            raise ValueError(f"anomalies {self.anomalies} exceed windows {self.windows}")
        if self.baseline_anomalies > self.baseline_windows:
            raise ValueError(f"baseline_anomalies {self.baseline_anomalies} exceed "
                             f"baseline_windows {self.baseline_windows}")

