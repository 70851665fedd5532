"""The parity gate: does the converted model decide like the float model?

The converted bytes run through :class:`edge_agent.inference.runtime.TfliteModel`, the exact code
path of the device (this import of ``edge_agent`` from ``cloud_hub`` is deliberate). Both models'
reconstructions are scored with :mod:`shared.scoring`, smoothed per segment as the agent smooths,
and compared against the threshold with the device's rule (score > threshold).
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from cloud_hub.training.artifact import ParityReport
from cloud_hub.training.threshold import is_anomaly
from edge_agent.inference.runtime import TfliteModel
from shared.manifest import Quantization, ScoreSpec
from shared.scoring import smooth, window_scores

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "measure_parity",
    "smoothed_scores",
    "time_interleaved",
    "time_per_window",
]

DEFAULT_MIN_AGREEMENT = 0.99


def smoothed_scores(
    scores: npt.NDArray[np.floating], lengths: list[int] | None, n: int
) -> npt.NDArray[np.float64]:
    """:func:`shared.scoring.smooth` applied to each segment's run of scores separately."""
    s = np.asarray(scores, dtype=np.float64)
    if lengths is None:
        return smooth(s, n)
    if sum(lengths) != len(s):
        raise ValueError(f"segment lengths add up to {sum(lengths)}, not {len(s)} scores")
    parts, start = [], 0
    for length in lengths:
        parts.append(smooth(s[start : start + length], n))
        start += length
    return np.concatenate(parts) if parts else s


def measure_parity(
    tflite: bytes,
    windows: npt.NDArray[np.floating],
    float_reconstructions: npt.NDArray[np.floating],
    *,
    quantization: Quantization | str,
    score: ScoreSpec,
    threshold: float,
    float_size: int,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    lengths: list[int] | None = None,
) -> ParityReport:
    """Compare the converted model with the float one on held-out ``windows`` (n, ...).

    ``float_reconstructions`` are the float Keras model's outputs for the same windows;
    ``lengths`` splits the windows into contiguous runs for smoothing (None: one run).
    """
    x = np.asarray(windows, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("parity needs at least one held-out window")
    model = TfliteModel(tflite)
    converted = model.reconstruct_many(x)
    us_per_window = time_per_window(model, x)

    float_raw = window_scores(x, float_reconstructions, score)
    conv_raw = window_scores(x, converted, score)
    float_smooth = smoothed_scores(float_raw, lengths, score.smoothing)
    conv_smooth = smoothed_scores(conv_raw, lengths, score.smoothing)
    float_flags = is_anomaly(float_smooth, threshold)
    conv_flags = is_anomaly(conv_smooth, threshold)
    error = np.abs(conv_smooth - float_smooth)
    return ParityReport(
        quantization=Quantization(quantization),
        decision_agreement=float((float_flags == conv_flags).mean()),
        windows=len(x),
        score_correlation=_correlation(float_smooth, conv_smooth),
        max_score_error=float(error.max()),
        mean_score_error=float(error.mean()),
        size_bytes=len(tflite),
        float_size_bytes=int(float_size),
        us_per_window=float(us_per_window),
        runtime=model.runtime,
        min_agreement=float(min_agreement),
        float_anomalies=int(float_flags.sum()),
        quantized_anomalies=int(conv_flags.sum()),
        input_dtype=model.input_dtype.name,
    )


def time_per_window(
    model: TfliteModel, windows: npt.NDArray[np.float32], *, limit: int = 500, rounds: int = 3
) -> float:
    """µs per window through the agent's per-window call: the best of ``rounds`` passes over up to
    ``limit`` windows, after a warm-up (the minimum is what the model costs; the rest is other
    processes on the same cores, which would otherwise decide a choice of mode)."""
    sample = windows[:limit]
    for w in sample[:20]:
        model.reconstruct(w)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for w in sample:
            model.reconstruct(w)
        best = min(best, time.perf_counter() - started)
    return best * 1e6 / len(sample)


def time_interleaved(
    models: dict[str, TfliteModel],
    windows: npt.NDArray[np.float32],
    *,
    rounds: int = 15,
    size: int = 200,
) -> dict[str, float]:
    """µs per window of each model through the agent's per-window call, the models taking turns
    round by round, so that a busy spell of the machine slows them alike; per model, the
    fastest round (what the model costs; choices of mode compare these)."""
    sample = windows[:size].reshape(min(size, len(windows)), -1)
    copyto = np.copyto
    for model in models.values():
        for w in sample[:20]:
            copyto(model.window_input, w)
            model.reconstruct_input()
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            # as the agent's Detector runs a window: into window_input (its normalization
            # writes there; a copy here), reconstruct_input() read in place
            buffer, run = model.window_input, model.reconstruct_input
            started = time.perf_counter()
            for w in sample:
                copyto(buffer, w)
                run()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: seconds * 1e6 / len(sample) for name, seconds in best.items()}


def _correlation(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float | None:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    value = float(np.corrcoef(a, b)[0, 1])
    return float(np.clip(value, -1.0, 1.0)) if np.isfinite(value) else None
