"""The agent's own detector, as an evaluation runs it: a trained model becomes what a device loads.

:func:`device_model` wraps a fitted :class:`~simulator.evaluate.detector.Detector` in the
manifest the hub would publish (unsigned: nothing here crosses a network) and loads it with the
agent's loader, so windows, normalisation, scoring, smoothing, thresholds and adaptation all run
through ``edge_agent.detect`` and the TFLite model through ``edge_agent.inference.runtime``.
:func:`replay` pushes readings through an agent :class:`~edge_agent.detect.detector.Detector` one
by one, as the daemon does, and returns the rows at which it raised events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.detect.detector import Detector as DeviceDetector
from edge_agent.detect.records import LoadedModel, Reconstructor
from edge_agent.models.loader import load_model
from edge_agent.sources.base import Reading
from shared.codec import sha256_hex, split
from shared.manifest import (
    ChunkTable,
    InputSpec,
    Manifest,
    ParitySummary,
)
from simulator.evaluate.detector import Detector

__all__ = ["MemoReconstructor", "Replay", "device_model", "replay"]

_CHUNK = 64 * 1024
_UNSIGNED_KEY_ID = "0" * 16  # the evaluation never signs: the model goes straight to the loader


class MemoReconstructor:
    """A model's runtime that remembers its outputs: the same window is run once.

    Settings that change only what happens after the model (threshold, smoothing, hold-off) see
    the same windows on every run; a grid over them then costs the interpreter only once.
    """

    def __init__(self, runtime: Reconstructor) -> None:
        self.runtime = runtime
        self._seen: dict[bytes, npt.NDArray[np.float32]] = {}

    def reconstruct(self, window: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        key = np.ascontiguousarray(window, dtype=np.float32).tobytes()
        out = self._seen.get(key)
        if out is None:
            out = self._seen[key] = self.runtime.reconstruct(window)
        return out


def device_model(
    detector: Detector,
    channels: list[str],
    *,
    name: str = "evaluate",
    version: int = 1,
    threshold: float | None = None,
    runtime: Reconstructor | None = None,
) -> LoadedModel:
    """The fitted model as the agent would run it (its device-path threshold by default).

    ``runtime`` replaces the interpreter the loader built (e.g. a :class:`MemoReconstructor`).
    """
    data = detector.tflite
    chunks = split(data, _CHUNK)
    manifest = Manifest(
        name=name,
        version=version,
        release=version,
        created_at=time.time(),
        quantization=detector.config.quantization,
        size=len(data),
        sha256=sha256_hex(data),
        chunk_size=_CHUNK,
        chunks=ChunkTable.of(chunks),
        input=InputSpec(window=detector.config.window, channels=list(channels),
                        layout="flat" if detector.layout == "flat" else "sequence"),
        normalization=detector.normalization,
        score=detector.score_spec,
        threshold=detector.threshold if threshold is None else threshold,
        parity=ParitySummary(decision_agreement=1.0, windows=0),
        float_size=len(data),
        key_id=_UNSIGNED_KEY_ID,
    )
    loaded = load_model(manifest, data, channels=list(channels))
    if runtime is not None:
        loaded.runtime = runtime
    return loaded


@dataclass
class Replay:
    """What a detector did over a stream: event rows, and per row the score and threshold."""

    events: list[int]
    scores: npt.NDArray[np.float64]  # smoothed score of the window ending at each row (NaN: none)
    thresholds: npt.NDArray[np.float64]  # the threshold that score met


def replay(
    detector: DeviceDetector,
    timestamps: npt.NDArray[np.floating],
    values: npt.NDArray[np.floating],
    *,
    on_row: Callable[[int], None] | None = None,
) -> Replay:
    """Push every row through ``detector`` in order, as the daemon does.

    ``on_row(i)`` runs before row ``i`` is pushed (to swap models between windows).
    """
    rows = np.asarray(values, dtype=np.float64)
    rows = rows.reshape(len(rows), -1)
    ts = np.asarray(timestamps, dtype=np.float64)
    scores = np.full(len(rows), np.nan)
    thresholds = np.full(len(rows), np.nan)
    events = []
    for i in range(len(rows)):
        if on_row is not None:
            on_row(i)
        before = detector.windows_scored
        if detector.push(Reading(float(ts[i]), tuple(float(v) for v in rows[i]))) is not None:
            events.append(i)
        if detector.windows_scored > before:
            scores[i] = detector.last_score
            thresholds[i] = detector.last_threshold
    return Replay(events=events, scores=scores, thresholds=thresholds)
