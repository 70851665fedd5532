"""Every quantization mode side by side: what int8, float16 and dynamic cost against float32.

The training pipeline calls :func:`compare_modes` once the float model is fitted and stores
:func:`comparison_rows` in ``ModelArtifact.extra["modes"]``, so ``cloud-hub models compare``
shows the table for any registered version without TensorFlow or retraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_hub.quantize.convert import convert
from cloud_hub.quantize.parity import DEFAULT_MIN_AGREEMENT, measure_parity
from cloud_hub.training.artifact import ParityReport
from shared.manifest import Quantization, ScoreSpec

__all__ = ["ALL_MODES", "ModeResult", "compare_modes", "comparison_rows", "format_comparison"]

ALL_MODES: tuple[Quantization, ...] = (
    Quantization.INT8,
    Quantization.FLOAT16,
    Quantization.DYNAMIC,
    Quantization.FLOAT32,
)


@dataclass(frozen=True)
class ModeResult:
    report: ParityReport
    tflite: bytes


def compare_modes(
    model: Any,
    *,
    representative: npt.NDArray[np.floating],
    windows: npt.NDArray[np.floating],
    float_reconstructions: npt.NDArray[np.floating],
    score: ScoreSpec,
    threshold: float,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    lengths: list[int] | None = None,
    modes: Sequence[Quantization | str] = ALL_MODES,
) -> dict[Quantization, ModeResult]:
    """Convert ``model`` in each mode and measure its parity on the same held-out windows.

    ``representative`` feeds int8 calibration; ``windows`` / ``float_reconstructions`` are the
    held-out windows (in the model's layout) and the float Keras model's outputs for them.
    """
    wanted = [Quantization(m) for m in modes]
    float_tflite = convert(model, Quantization.FLOAT32)
    results: dict[Quantization, ModeResult] = {}
    for mode in wanted:
        tflite = (
            float_tflite
            if mode is Quantization.FLOAT32
            else convert(model, mode, representative=representative)
        )
        report = measure_parity(
            tflite,
            windows,
            float_reconstructions,
            quantization=mode,
            score=score,
            threshold=threshold,
            float_size=len(float_tflite),
            min_agreement=min_agreement,
            lengths=lengths,
        )
        results[mode] = ModeResult(report=report, tflite=tflite)
    return results


def comparison_rows(reports: Sequence[ParityReport]) -> list[dict[str, Any]]:
    """JSON-ready rows, one per mode (what the registry stores and the CLI prints)."""
    rows = []
    for r in reports:
        rows.append(
            {
                "quantization": r.quantization.value,
                "decision_agreement": round(r.decision_agreement, 6),
                "passed": r.passed,
                "score_correlation": None
                if r.score_correlation is None
                else round(r.score_correlation, 6),
                "max_score_error": r.max_score_error,
                "mean_score_error": r.mean_score_error,
                "size_bytes": r.size_bytes,
                "size_ratio": round(r.size_bytes / r.float_size_bytes, 4),
                "us_per_window": round(r.us_per_window, 2),
                "float_anomalies": r.float_anomalies,
                "quantized_anomalies": r.quantized_anomalies,
                "windows": r.windows,
                "runtime": r.runtime,
            }
        )
    return rows


def format_comparison(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`comparison_rows` output."""
    header = (
        f"{'mode':<8} {'agree':>8} {'gate':>5} {'corr':>8} {'max err':>10} {'mean err':>10} "
        f"{'bytes':>8} {'ratio':>6} {'µs/win':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        corr = row["score_correlation"]
        lines.append(
            f"{row['quantization']:<8} {row['decision_agreement']:>8.4f} "
            f"{'ok' if row['passed'] else 'FAIL':>5} "
            f"{'n/a' if corr is None else f'{corr:.4f}':>8} "
            f"{row['max_score_error']:>10.3g} {row['mean_score_error']:>10.3g} "
            f"{row['size_bytes']:>8,} {row['size_ratio']:>6.2f} {row['us_per_window']:>7.1f}"
        )
    return "\n".join(lines)
