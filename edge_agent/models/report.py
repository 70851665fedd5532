"""What the updater says in ``reported``: the model a state is about, the state, why, and what
runs. A report that differs from the last one only in its time is not sent again."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.detect.detector import Detector
from shared.manifest import Manifest
from shared.messages import ModelRef, ModelState, ReportedModel

__all__ = ["ModelReport", "ModelReporter"]


@dataclass(frozen=True)
class ModelReport:
    """What ``reported`` says: the model the state is about, the state, why, and what runs."""

    model: ReportedModel | None
    state: ModelState
    error: str | None
    active: ReportedModel | None
    threshold: float | None
    since: float


def _reported(manifest: Manifest | None, ref: ModelRef | None = None) -> ReportedModel | None:
    if manifest is not None:
        return ReportedModel(name=manifest.name, version=manifest.version, sha256=manifest.sha256,
                             variant=manifest.quantization.value)
    if ref is not None:
        return ReportedModel(name=ref.name, version=ref.version, variant=ref.variant)
    return None


class ModelReporter:
    """Hands each new :class:`ModelReport` to ``on_report``, saying what ``detector`` runs."""

    def __init__(self, detector: Detector, on_report: Callable[[ModelReport], None]) -> None:
        self._detector = detector
        self._on_report = on_report
        self.state: ModelState | None = None
        self.last_report: ModelReport | None = None

    def report(self, manifest: Manifest | None, state: ModelState, error: str | None, *,
               ref: ModelRef | None = None) -> None:
        self.state = state
        active = self._detector.active
        report = ModelReport(
            model=_reported(manifest, ref),
            state=state,
            error=error[:2000] if error else None,
            active=_reported(active.manifest) if active else None,
            threshold=active.threshold if active else None,
            since=time.time(),
        )
        last = self.last_report
        if last is not None and report == dataclasses.replace(last, since=report.since):
            return  # nothing changed (e.g. the retained desired again after a reconnect)
        self.last_report = report
        self._on_report(report)
