"""Score anomaly events against the ground truth of injected faults.

An anomaly event detects a fault when they are on the same device and the event's window
``[ts_start, ts_end]`` overlaps the fault's interval ``[start, end)``; an event that overlaps no
fault of its device is a false alarm. Precision is over events (true events / all events), recall
over faults (faults detected / faults injected). Detection latency runs from the fault's start to
the hub's commit (``stored_at``) of the first event that detects it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DetectionScore",
    "Event",
    "FaultOutcome",
    "GroundTruth",
    "latency_summary",
    "score_detections",
]


@dataclass(frozen=True)
class GroundTruth:
    """One injected fault: which device, what, and when (``[start, end)``, epoch seconds)."""

    device_id: str
    kind: str
    start: float
    end: float
    severity: float = 1.0
    channels: tuple[str, ...] = ()

    def overlaps(self, ts_start: float, ts_end: float) -> bool:
        return ts_start < self.end and ts_end >= self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "severity": self.severity,
            "channels": list(self.channels),
        }


@dataclass(frozen=True)
class Event:
    """One anomaly event as the hub stored it."""

    device_id: str
    seq: int
    ts_start: float
    ts_end: float
    stored_at: float | None = None  # hub commit time; None when unknown (e.g. not stored)
    score: float = 0.0
    threshold: float = 0.0

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> Event:
        """From one row of ``GET /api/v1/anomalies``."""
        stored = row.get("stored_at")
        return cls(
            device_id=str(row["device_id"]),
            seq=int(row["seq"]),
            ts_start=float(row["ts_start"]),
            ts_end=float(row["ts_end"]),
            stored_at=float(stored) if stored is not None else None,
            score=float(row.get("score", 0.0)),
            threshold=float(row.get("threshold", 0.0)),
        )


@dataclass(frozen=True)
class FaultOutcome:
    fault: GroundTruth
    events: int  # events that overlap it
    latency_ms: float | None  # fault start -> hub commit of its first event

    @property
    def detected(self) -> bool:
        return self.events > 0


@dataclass(frozen=True)
class DetectionScore:
    faults_injected: int
    faults_detected: int
    events: int
    true_events: int
    false_alarms: int
    outcomes: list[FaultOutcome] = field(default_factory=list)
    false_alarm_events: list[Event] = field(default_factory=list)

    @property
    def precision(self) -> float:
        # No events at all: nothing was wrongly raised, but nothing was found either.
        return self.true_events / self.events if self.events else (
            1.0 if self.faults_injected == 0 else 0.0
        )

    @property
    def recall(self) -> float:
        return self.faults_detected / self.faults_injected if self.faults_injected else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def latencies_ms(self) -> list[float]:
        return [o.latency_ms for o in self.outcomes if o.latency_ms is not None]

    def by_kind(self) -> dict[str, dict[str, float | int | None]]:
        groups: dict[str, list[FaultOutcome]] = defaultdict(list)
        for o in self.outcomes:
            groups[o.fault.kind].append(o)
        return {
            kind: {
                "injected": len(items),
                "detected": sum(o.detected for o in items),
                "latency_ms_p50": latency_summary(
                    [o.latency_ms for o in items if o.latency_ms is not None]
                )["p50"],
            }
            for kind, items in sorted(groups.items())
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "faults_injected": self.faults_injected,
            "faults_detected": self.faults_detected,
            "events": self.events,
            "true_events": self.true_events,
            "false_alarms": self.false_alarms,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "detection_latency_ms": latency_summary(self.latencies_ms),
            "by_kind": self.by_kind(),
        }


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50, p95 and max of latencies in milliseconds (None when there are none)."""
    values = [x for x in latencies_ms if x is not None and math.isfinite(x)]
    if not values:
        return {"p50": None, "p95": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


def score_detections(faults: Iterable[GroundTruth], events: Iterable[Event]) -> DetectionScore:
    """Match events to faults on the same device by overlap; see the module docstring."""
    fault_list = list(faults)
    event_list = list(events)
    faults_by_device: dict[str, list[GroundTruth]] = defaultdict(list)
    for f in fault_list:
        if not f.end > f.start:
            raise ValueError(f"fault {f.kind} on {f.device_id} ends ({f.end}) before it starts")
        faults_by_device[f.device_id].append(f)

    matched: dict[int, list[Event]] = defaultdict(list)  # index in fault_list -> events
    index_of = {id(f): i for i, f in enumerate(fault_list)}
    false_alarms: list[Event] = []
    true_events = 0
    for e in event_list:
        overlapping = [
            f for f in faults_by_device.get(e.device_id, ()) if f.overlaps(e.ts_start, e.ts_end)
        ]
        if not overlapping:
            false_alarms.append(e)
            continue
        true_events += 1
        for f in overlapping:
            matched[index_of[id(f)]].append(e)

    outcomes = []
    for i, f in enumerate(fault_list):
        hits = matched.get(i, [])
        stored = [e.stored_at for e in hits if e.stored_at is not None]
        latency = (min(stored) - f.start) * 1000.0 if stored else None
        outcomes.append(FaultOutcome(fault=f, events=len(hits), latency_ms=latency))
    return DetectionScore(
        faults_injected=len(fault_list),
        faults_detected=sum(o.detected for o in outcomes),
        events=len(event_list),
        true_events=true_events,
        false_alarms=len(false_alarms),
        outcomes=outcomes,
        false_alarm_events=false_alarms,
    )
