"""The model ``bench/edge.py`` measures: the default spec trained on simulated pumps and
converted in every quantization mode, its Keras timing, and the manifest the hub would sign."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def train_default_model() -> tuple[Any, Any]:
    """Fit the default spec on a simulated fleet; convert int8 and float32 with parity."""
    from cloud_hub.quantize.compare import ALL_MODES, compare_modes
    from cloud_hub.training.artifact import TrainingSpec
    from cloud_hub.training.pipeline import fit_model
    from simulator.signals import SignalGenerator

    devices, rows = 6, 2000
    blocks = [SignalGenerator("pump", seed=i, rate_hz=1.0).generate(rows) for i in range(devices)]
    channels = SignalGenerator("pump").channels
    readings = np.concatenate([b.values for b in blocks])
    spec = TrainingSpec()
    fitted = fit_model(readings, channels, spec, segments=[rows] * devices)
    results = compare_modes(
        fitted.model,
        representative=fitted.train_x,
        windows=fitted.validation_x,
        float_reconstructions=fitted.float_reconstructions,
        score=fitted.score,
        threshold=fitted.threshold.threshold,
        lengths=fitted.data.validation_lengths,
        modes=list(ALL_MODES),  # all of them, for the choice "auto" would make
    )
    return fitted, results


def time_keras(model: Any, windows: np.ndarray) -> tuple[float, float]:
    """µs per single window: eager ``model(x)`` and ``model.predict(x)``."""
    for w in windows[:20]:
        model(w[None], training=False)
    started = time.perf_counter()
    for w in windows:
        np.asarray(model(w[None], training=False))
    eager = (time.perf_counter() - started) * 1e6 / len(windows)
    few = windows[: max(10, len(windows) // 10)]
    model.predict(few[:2], verbose=0)
    started = time.perf_counter()
    for w in few:
        model.predict(w[None], verbose=0)
    predict = (time.perf_counter() - started) * 1e6 / len(few)
    return eager, predict


def signed_manifest(fitted: Any, result: Any, key: Any) -> Any:
    """The manifest the hub would sign for ``result`` (a ModeResult) of ``fitted``."""
    from shared.codec import sha256_hex, split
    from shared.manifest import ChunkTable, InputSpec, Manifest
    from simulator.signals import SignalGenerator

    tflite = result.tflite
    chunk_size = 16 * 1024
    chunks = split(tflite, chunk_size)
    return key.sign(
        Manifest(
            name="bench-edge",
            version=1,
            release=1,
            created_at=time.time(),
            quantization=result.report.quantization,
            size=len(tflite),
            sha256=sha256_hex(tflite),
            chunk_size=chunk_size,
            chunks=ChunkTable.of(chunks),
            input=InputSpec(
                window=fitted.data.train.shape[1],
                channels=SignalGenerator("pump").channels,
                dtype=result.report.input_dtype,
                layout=fitted.family.layout,
            ),
            normalization=fitted.data.normalization,
            score=fitted.score,
            threshold=fitted.threshold.threshold,
            parity=result.report.summary(),
            float_size=result.report.float_size_bytes,
            key_id=key.key_id,
        )
    )
