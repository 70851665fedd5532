"""Sliding windows over readings → normalise → reconstruct with TFLite → score → anomaly.

The detector holds the active model and, during a staged update, a shadow model scored on the
same windows without raising anything. Both run in the caller's thread, so a swap always lands
between two windows. A model that raises or returns non-finite numbers while active is taken
out and reported through :meth:`Detector.take_failure` (the agent then rolls back). With
``adaptation`` settings enabled, the active model's normalization and threshold follow slow
regime changes (:mod:`edge_agent.detect.adaptation`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.detect.adaptation import Adaptation, AdaptationSettings
from edge_agent.detect.records import (
    Calibration,
    Detection,
    InPlaceReconstructor,
    LoadedModel,
    ModelRuntimeError,
    ShadowReport,
    WindowObserver,
    quantiles,
)
from edge_agent.sources.base import Reading
from shared.scoring import WindowNormalizer, WindowScorer, responsible_channels

__all__ = ["Detector"]

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    model: LoadedModel
    normalizer: WindowNormalizer
    columns: npt.NDArray[np.intp] | None  # the model's channels among the source's; None: all
    # The per-window path, bound once: the window is normalized into ``window`` (window ×
    # channels), a view of ``flat``, and ``reconstruct()`` gives the flat reconstruction.
    window: npt.NDArray[np.float32]
    flat: npt.NDArray[np.float32]
    reconstruct: Callable[[], npt.NDArray[np.float32]]
    score: WindowScorer
    recent: deque[float]  # the last ``smoothing`` scores
    since_scored: int = 0
    in_episode: bool = False
    since_alert: int = 0
    adaptation: Adaptation | None = None


class Detector:
    def __init__(
        self,
        channels: list[str],
        *,
        realert_windows: int = 0,
        clock: Callable[[], float] = time.time,
        latency_samples: int = 2048,
        adaptation: AdaptationSettings | None = None,
        observer: WindowObserver | None = None,
        keep_readings: int = 1,
    ) -> None:
        """``keep_readings``: how many recent readings to hold before any model asks for a
        window, so that a model activated (or shadowed) later scores from its first reading."""
        self.channels = list(channels)
        self.observer = observer
        self.realert_windows = realert_windows
        self.adaptation_settings = adaptation
        self.windows_scored = 0
        self.anomalies = 0
        self.last_score = math.nan  # the active model's newest smoothed score ...
        self.last_threshold = math.nan  # ... and the threshold it met
        self._clock = clock
        # A ring of the last ``capacity`` readings, each written twice (at i and i + capacity),
        # so that the newest n readings are always one contiguous slice: no copy per window.
        self._capacity = max(1, keep_readings)
        self._values = np.zeros((2 * self._capacity, len(channels)), dtype=np.float32)
        self._ts = [0.0] * self._capacity
        self._count = 0  # readings seen; the ring index is count % capacity
        self._active: _Slot | None = None
        self._shadow: _Slot | None = None
        self.shadow_report = ShadowReport()
        self._failure: tuple[LoadedModel, str] | None = None
        self._latency_us: deque[float] = deque(maxlen=latency_samples)
        self.calibration: Calibration | None = None

    # -- models --------------------------------------------------------------------------
    @property
    def active(self) -> LoadedModel | None:
        return self._active.model if self._active else None

    @property
    def shadow(self) -> LoadedModel | None:
        return self._shadow.model if self._shadow else None

    @property
    def adaptation(self) -> Adaptation | None:
        """The active model's adaptation state (None when off or no model is active)."""
        return self._active.adaptation if self._active else None

    def _slot(self, model: LoadedModel) -> _Slot:
        index = list(model.channel_index)
        identity = index == list(range(len(self.channels)))
        shape = (model.manifest.input.window, len(index))
        size = shape[0] * shape[1]
        runtime = model.runtime
        if (isinstance(runtime, InPlaceReconstructor) and runtime.window_input.size == size
                and runtime.window_input.dtype == np.float32):
            flat, reconstruct = runtime.window_input, runtime.reconstruct_input
        else:  # any other Reconstructor: the window is handed over, as it is to a TfliteModel
            flat = np.zeros(size, dtype=np.float32)
            window = flat.reshape(shape)

            def reconstruct() -> npt.NDArray[np.float32]:
                return runtime.reconstruct(window).reshape(-1)

        return _Slot(model, WindowNormalizer(model.manifest.normalization, shape[0]),
                     None if identity else np.asarray(index, dtype=np.intp),
                     window=flat.reshape(shape), flat=flat, reconstruct=reconstruct,
                     score=WindowScorer(size, model.manifest.score),
                     recent=deque(maxlen=model.manifest.score.smoothing))

    def activate(self, model: LoadedModel | None) -> None:
        self._active = self._slot(model) if model is not None else None
        settings = self.adaptation_settings
        if self._active is not None and model is not None and settings and settings.enabled:
            self._active.adaptation = Adaptation(
                settings, model.manifest.normalization, model.threshold
            )
        if model is not None:
            self._ensure_capacity(model.manifest.input.window)
        self._latency_us.clear()
        self.calibration = None
        if self.observer is not None:
            self.observer.model_changed(model.ref if model else None,
                                        model.threshold if model else math.nan)

    def start_shadow(self, model: LoadedModel) -> None:
        self._shadow = self._slot(model)
        self.shadow_report = ShadowReport()
        self._ensure_capacity(model.manifest.input.window)

    def stop_shadow(self) -> LoadedModel | None:
        slot, self._shadow = self._shadow, None
        return slot.model if slot else None

    def start_calibration(self, windows: int, quantile: float, factor: float) -> None:
        self.calibration = Calibration(windows, quantile, factor)

    def take_failure(self) -> tuple[LoadedModel, str] | None:
        """The active model that failed since the last call, with the reason (once)."""
        failure, self._failure = self._failure, None
        return failure

    def inference_us(self) -> tuple[float | None, float | None]:
        if not self._latency_us:
            return None, None
        p50, p99 = quantiles(np.fromiter(self._latency_us, dtype=np.float64), (0.5, 0.99))
        return p50, p99

    def _ensure_capacity(self, window: int) -> None:
        if window <= self._capacity:
            return
        keep = min(self._count, self._capacity)
        values = self._last(keep).copy()
        end = self._count % self._capacity
        ts = [self._ts[(end - keep + i) % self._capacity] for i in range(keep)]
        self._capacity = window
        self._values = np.zeros((2 * window, len(self.channels)), dtype=np.float32)
        self._values[:keep] = values
        self._values[window : window + keep] = values
        self._ts = ts + [0.0] * (window - keep)
        self._count = keep

    def _last(self, n: int) -> npt.NDArray[np.float32]:
        """The newest ``n`` readings (n ≤ capacity), oldest first: a view into the ring."""
        end = self._count % self._capacity + self._capacity
        return self._values[end - n : end]

    def _span(self, n: int) -> tuple[float, float]:
        """Timestamps of the oldest and the newest of the last ``n`` readings."""
        end = self._count % self._capacity
        return self._ts[(end - n) % self._capacity], self._ts[end - 1]

    # -- readings ------------------------------------------------------------------------
    def push(self, reading: Reading) -> Detection | None:
        """Add one reading; a detection when the active model flags the newest window."""
        pos = self._count % self._capacity
        values = self._values
        values[pos] = reading.values
        values[pos + self._capacity] = values[pos]
        self._ts[pos] = float(reading.ts)
        self._count += 1
        detection = None
        if self._active is not None:
            detection = self._score_active(self._active)
        if self._shadow is not None:
            self._score_shadow(self._shadow)
        return detection

    def _due(self, slot: _Slot) -> bool:
        slot.since_scored += 1
        spec = slot.model.manifest.input
        if self._count < spec.window or slot.since_scored < spec.stride:
            return False
        slot.since_scored = 0
        return True

    def _run(
        self, slot: _Slot, *, timed: bool
    ) -> tuple[float, npt.NDArray[np.float32], npt.NDArray[np.float32], tuple[float, float]]:
        m = slot.model
        window = m.manifest.input.window
        raw = self._last(window)
        if slot.columns is not None:
            raw = raw[:, slot.columns]
        if slot.adaptation is not None:
            np.copyto(slot.window, slot.adaptation.normalize(raw))
        else:
            slot.normalizer(raw, slot.window)  # straight into the model's input
        started = time.perf_counter_ns()
        try:
            y = slot.reconstruct()
        except Exception as exc:
            raise ModelRuntimeError(f"{m.label} raised {type(exc).__name__}: {exc}") from None
        if timed:
            self._latency_us.append((time.perf_counter_ns() - started) / 1000.0)
        x = slot.flat
        score = slot.score(x, y)
        # A NaN or inf anywhere in the output makes the score non-finite: one check per window
        # instead of np.isfinite over the output, which is looked at only then for the reason.
        if not math.isfinite(score):
            if not np.isfinite(y).all():
                raise ModelRuntimeError(f"{m.label} produced non-finite output (NaN or inf)")
            raise ModelRuntimeError(f"{m.label} produced a non-finite score")
        recent = slot.recent
        recent.append(score)  # the oldest leaves at maxlen (the smoothing)
        return sum(recent) / len(recent), x, y, self._span(window)

    def _score_active(self, slot: _Slot) -> Detection | None:
        if not self._due(slot):
            return None
        try:
            score, x, y, span = self._run(slot, timed=True)
        except ModelRuntimeError as exc:
            log.error("active model failed: %s", exc)
            self._failure = (slot.model, str(exc))
            self._active = None
            return None
        self.windows_scored += 1
        self._calibrate(slot, score)
        model = slot.model
        threshold = model.threshold
        if slot.adaptation is not None:
            threshold = slot.adaptation.threshold(model.threshold)
            stride = model.manifest.input.stride
            newest = self._last(min(stride, self._count))
            slot.adaptation.observe(score, score > threshold, newest[:, model.channel_index])
        self.last_score, self.last_threshold = score, threshold
        if self.observer is not None:
            self.observer.window_scored(ts=span, score=score, threshold=threshold,
                                        anomalous=score > threshold)
        if score <= threshold:
            slot.in_episode = False
            return None
        realert = self.realert_windows or model.manifest.input.window
        slot.since_alert += 1
        if slot.in_episode and slot.since_alert < realert:
            return None
        slot.in_episode = True
        slot.since_alert = 0
        self.anomalies += 1
        names = [self.channels[i] for i in model.channel_index]
        blamed = responsible_channels(x, y, names,
                                      channel_scale=model.manifest.score.channel_scale)
        return Detection(ts=span, score=score, threshold=threshold, model=model.ref,
                         channels=blamed, detected_at=self._clock())

    def _calibrate(self, slot: _Slot, score: float) -> None:
        cal = self.calibration
        if cal is None or cal.threshold is not None:
            return
        cal.scores.append(score)
        if len(cal.scores) >= cal.windows:
            cal.threshold = quantiles(np.asarray(cal.scores), (cal.quantile,))[0] * cal.factor
            slot.model.threshold = cal.threshold
            slot.model.threshold_source = "calibrated"
            log.info("calibrated threshold of %s: %.6g (quantile %.4g of %d windows × %.3g)",
                     slot.model.label, cal.threshold, cal.quantile, len(cal.scores), cal.factor)

    def _score_shadow(self, slot: _Slot) -> None:
        if not self._due(slot):
            return
        report = self.shadow_report
        try:
            score, _, _, _ = self._run(slot, timed=False)
        except ModelRuntimeError as exc:
            report.errors += 1
            report.last_error = str(exc)
            return
        report.windows += 1
        if score > slot.model.threshold:
            report.anomalies += 1
            if self._active is not None and self.last_score > self.last_threshold:
                report.shared += 1
