"""What a telemetry flood offers (:class:`FloodPlan`) and what its publishers report
(:class:`FloodReport`): the arguments and the result of :class:`simulator.flood.Publishers`."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FloodPlan", "FloodReport"]


@dataclass(frozen=True)
class FloodPlan:
    """What the publishers offer, in total over all of them."""

    devices: int = 100
    readings: int = 10  # rows per telemetry message
    channels: int = 8
    rate: float = 0.0  # messages per second in total; 0: as fast as the broker takes them
    processes: int = 1
    window: int = 1000  # unacknowledged publishes per connection (capped by the broker's)
    prefix: str = "edgeloop/v1"
    device_prefix: str = "flood"
    encoding: str = "json"  # or "msgpack" (shared/packed.py)

    def device_ids(self) -> list[str]:
        return [f"{self.device_prefix}-{i:05d}" for i in range(self.devices)]


@dataclass
class FloodReport:
    """What one publisher (or all, merged) sent and what the broker said about it.

    A device's seqs run from 0 to ``sent[d] - 1``; of those, ``refused[d]`` the broker
    refused and ``unconfirmed[d]`` were in flight when the connection broke. Every other one
    the broker acknowledged (:meth:`acked_seqs`)."""

    acked: dict[str, int] = field(default_factory=dict)  # device -> messages acknowledged
    epochs: dict[str, str] = field(default_factory=dict)
    readings_per_message: int = 0
    errors: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    refused: dict[str, list[int]] = field(default_factory=dict)
    unconfirmed: dict[str, list[int]] = field(default_factory=dict)
    cpu_s: float = 0.0  # the publisher processes' CPU time, user + system

    @property
    def messages(self) -> int:
        return sum(self.acked.values())

    @property
    def readings(self) -> int:
        return self.messages * self.readings_per_message

    @property
    def in_doubt(self) -> int:
        return sum(len(v) for v in self.unconfirmed.values())

    def acked_seqs(self, device_id: str) -> list[int]:
        skip = set(self.refused.get(device_id, ())) | set(self.unconfirmed.get(device_id, ()))
        return [s for s in range(self.sent.get(device_id, 0)) if s not in skip]

    def merge(self, other: FloodReport) -> None:
        self.acked.update(other.acked)
        self.epochs.update(other.epochs)
        self.sent.update(other.sent)
        self.refused.update(other.refused)
        self.unconfirmed.update(other.unconfirmed)
        self.readings_per_message = other.readings_per_message or self.readings_per_message
        self.errors.extend(other.errors)
        self.cpu_s += other.cpu_s
