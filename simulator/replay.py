"""Re-score stored telemetry through the published TFLite model, the way the agent scores it.

Used for the report's plots: the score and threshold curves are recomputed from the readings
the hub stored, with the edge runtime (:class:`edge_agent.inference.runtime.TfliteModel`) and
the manifest's normalization, window, stride, score method and smoothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.inference.runtime import TfliteModel
from shared.manifest import Manifest, parse_manifest
from shared.scoring import normalize, sliding_windows, smooth, window_scores

__all__ = ["ScoreTrace", "replay_scores"]


@dataclass(frozen=True)
class ScoreTrace:
    """One score per scored window, stamped with the window's last reading."""

    ts: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    threshold: float


def replay_scores(
    tflite: bytes,
    manifest: Manifest | Mapping[str, Any],
    channels: Sequence[str],
    ts: npt.NDArray[np.floating],
    values: npt.NDArray[np.floating],
) -> ScoreTrace:
    """Scores of every window of ``values`` (rows × ``channels``) under the model."""
    m = manifest if isinstance(manifest, Manifest) else parse_manifest(json.dumps(manifest))
    missing = [c for c in m.input.channels if c not in channels]
    if missing:
        raise ValueError(f"telemetry lacks the model's channel(s) {missing}")
    cols = [list(channels).index(c) for c in m.input.channels]
    data = normalize(np.asarray(values, dtype=np.float64)[:, cols], m.normalization)
    window, stride = m.input.window, m.input.stride
    windows = sliding_windows(data, window, stride)
    empty = np.empty(0, dtype=np.float64)
    if len(windows) == 0:
        return ScoreTrace(ts=empty, scores=empty, threshold=m.threshold)
    model = TfliteModel(tflite)
    model.check_input(window, len(cols))
    recon = model.reconstruct_many(windows)
    scores = smooth(window_scores(windows, recon, m.score), m.score.smoothing)
    ends = np.asarray(ts, dtype=np.float64)[window - 1 :: stride][: len(scores)]
    return ScoreTrace(ts=ends, scores=scores, threshold=m.threshold)
