"""What the detector works with and reports: the loaded model and the protocols its runtime
meets, a detection, a shadow run's report, a calibration in progress, and the quantiles they
are computed with."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from shared.manifest import Manifest
from shared.messages import ModelRef

__all__ = [
    "Calibration",
    "Detection",
    "InPlaceReconstructor",
    "LoadedModel",
    "ModelRuntimeError",
    "Reconstructor",
    "ShadowReport",
    "WindowObserver",
    "quantiles",
]


class ModelRuntimeError(RuntimeError):
    """The model failed on a window (raised, or produced NaN/inf)."""


class WindowObserver(Protocol):
    """Told of each model change and each window the active model scored (drift monitoring,
    :class:`edge_agent.drift.monitor.DriftMonitor`)."""

    def model_changed(self, model: ModelRef | None, threshold: float) -> None: ...

    def window_scored(self, *, ts: tuple[float, float], score: float, threshold: float,
                      anomalous: bool) -> None: ...


class Reconstructor(Protocol):
    """What the detector needs from a model (``TfliteModel`` is one)."""

    def reconstruct(self, window: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]: ...


@runtime_checkable
class InPlaceReconstructor(Protocol):
    """A model the detector hands each window without copies (``TfliteModel`` is one): the
    window is normalized straight into ``window_input`` (flat), and ``reconstruct_input()``
    returns its reconstruction (flat), the detector's to read until the next call."""

    window_input: npt.NDArray[np.float32]
    reconstruct_input: Callable[[], npt.NDArray[np.float32]]


@dataclass
class LoadedModel:
    """A verified model ready to score: its manifest, interpreter and threshold in use."""

    manifest: Manifest
    runtime: Reconstructor
    threshold: float
    channel_index: list[int]  # positions of the model's channels among the source's
    threshold_source: str = "manifest"  # manifest | calibrated

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.manifest.name, version=self.manifest.version)

    @property
    def label(self) -> str:
        return f"{self.manifest.name} v{self.manifest.version}"


@dataclass(frozen=True)
class Detection:
    """An anomaly decided on the device, before the outbox gives it a ``seq``."""

    ts: tuple[float, float]
    score: float
    threshold: float
    model: ModelRef
    channels: list[str]
    detected_at: float


@dataclass
class ShadowReport:
    """What a shadow run saw. ``shared`` counts the shadow's anomalies that the running model
    flagged too (its newest decision): a device in a real fault while it updates flags those
    windows with either model, and that says nothing against the new one."""

    windows: int = 0
    anomalies: int = 0
    shared: int = 0
    errors: int = 0
    last_error: str | None = None

    @property
    def anomaly_rate(self) -> float:
        return self.anomalies / self.windows if self.windows else 0.0

    @property
    def excess_rate(self) -> float:
        """The share of windows the shadow flagged and the running model did not: what the
        shadow gate bounds (all of its anomalies when no model runs)."""
        return (self.anomalies - self.shared) / self.windows if self.windows else 0.0


def quantiles(values: npt.NDArray[np.float64], qs: tuple[float, ...]) -> list[float]:
    """``np.quantile(values, qs)`` (its default, linear method), without ``np.quantile``: that
    calls ``np.unique``, which imports ``numpy.ma`` (1.1 MB resident in the daemon, for good)."""
    data = np.sort(values, axis=None)
    if data.size == 0:
        raise ValueError("quantiles of no values")
    out = []
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is not within [0, 1]")
        position = q * (data.size - 1)
        below = math.floor(position)
        a, b = float(data[below]), float(data[min(below + 1, data.size - 1)])
        t = position - below
        # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
        out.append(b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t)
    return out


@dataclass
class Calibration:
    """Scores collected on this device's own data to set its own threshold."""

    windows: int
    quantile: float
    factor: float
    scores: list[float] = field(default_factory=list)
    threshold: float | None = None
