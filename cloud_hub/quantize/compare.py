"""Every quantization mode side by side: what int8, float16 and dynamic cost against float32.

The training pipeline calls :func:`compare_modes` once the float model is fitted and stores
:func:`comparison_rows` in ``ModelArtifact.extra["modes"]``, so ``cloud-hub models compare``
shows the table for any registered version without TensorFlow or retraining.
:func:`choose_mode` picks, for ``quantization = "auto"``, the fastest mode that passed the parity
gate, and says why (``extra["quantization_choice"]``, shown by ``cloud-hub models show``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cloud_hub.quantize.convert import convert
from cloud_hub.quantize.parity import DEFAULT_MIN_AGREEMENT, measure_parity, time_interleaved
from cloud_hub.training.artifact import ParityReport
from edge_agent.inference.runtime import TfliteModel
from shared.manifest import Quantization, ScoreSpec

__all__ = [
    "ALL_MODES",
    "AUTO",
    "AUTO_MODES",
    "SPEED_TOLERANCE",
    "ModeChoice",
    "ModeResult",
    "choose_mode",
    "compare_modes",
    "comparison_rows",
    "format_comparison",
]

AUTO: Literal["auto"] = "auto"
# Modes within this fraction of the fastest count as equally fast; the first of ALL_MODES among
# them wins (the smaller file; int8 loads in every edge runtime). compare_modes times the modes
# taking turns, and their ratios then vary by about 2% between runs, even at load 8 on 2 cores
# (int8/float32 1.187-1.210 over 8 runs): 5% separates a real difference from that noise.
SPEED_TOLERANCE = 0.05

ALL_MODES: tuple[Quantization, ...] = (
    Quantization.INT8,
    Quantization.FLOAT16,
    Quantization.DYNAMIC,
    Quantization.FLOAT32,
)
# Modes "auto" may publish: those every edge runtime loads. tflite-runtime 2.14 (the legacy
# runtime of devices on numpy<2) refuses a dynamic-range model converted by TF 2.21 ("Didn't
# find op for builtin opcode 'FULLY_CONNECTED' version '12'"); int8, float16 and float32 load.
# Dynamic is still measured and may be asked for by name.
AUTO_MODES: tuple[Quantization, ...] = (
    Quantization.INT8,
    Quantization.FLOAT16,
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
    With more than one mode, ``us_per_window`` comes from timing them all in turns
    (:func:`~cloud_hub.quantize.parity.time_interleaved`), so that :func:`choose_mode` compares
    figures taken under the same load.
    """
    wanted = [Quantization(m) for m in modes]
    float_tflite = convert(model, Quantization.FLOAT32)
    results: dict[Quantization, ModeResult] = {}

    def measured(tflite: bytes, mode: Quantization, detail: str = "") -> ModeResult:
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
        return ModeResult(report=dataclasses.replace(report, detail=detail), tflite=tflite)

    for mode in wanted:
        if mode is Quantization.FLOAT32:
            results[mode] = measured(float_tflite, mode)
        elif mode is Quantization.INT8:
            # one weight scale per dense layer first (a file ~25% smaller); one per output unit
            # only when that fails the gate and per-unit scales do better
            result = measured(convert(model, mode, representative=representative), mode,
                              "per-tensor weight scales")
            if not result.report.passed:
                per_channel = measured(
                    convert(model, mode, representative=representative, per_channel=True),
                    mode, "per-channel weight scales (per-tensor failed the parity gate)",
                )
                if per_channel.report.decision_agreement > result.report.decision_agreement:
                    result = per_channel
            results[mode] = result
        else:
            results[mode] = measured(convert(model, mode, representative=representative), mode)
    if len(results) > 1:  # time the modes against each other, taking turns
        us = time_interleaved(
            {m.value: TfliteModel(r.tflite) for m, r in results.items()},
            np.asarray(windows, dtype=np.float32),
        )
        results = {
            m: dataclasses.replace(r, report=dataclasses.replace(
                r.report, us_per_window=us[m.value]))
            for m, r in results.items()
        }
    return results


@dataclass(frozen=True)
class ModeChoice:
    """Which mode a model is published in, and why."""

    mode: Quantization
    requested: str  # a mode, or "auto"
    reason: str
    fastest_passing: Quantization | None
    us_per_window: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "requested": self.requested,
            "reason": self.reason,
            "fastest_passing": None if self.fastest_passing is None else self.fastest_passing.value,
            "us_per_window": self.us_per_window,
        }


def choose_mode(
    reports: Sequence[ParityReport],
    requested: Quantization | str,
    *,
    tolerance: float = SPEED_TOLERANCE,
) -> ModeChoice:
    """The requested mode, or for ``"auto"`` the fastest mode of ``AUTO_MODES`` that passed the
    parity gate (modes within ``tolerance`` of the fastest are a tie, won by the first in
    ``ALL_MODES``).
    Speed is the agent's per-window call on this machine's edge runtime (``reports[i].runtime``);
    the reason says which modes were faster or failed, so an explicit choice is explained too."""
    if not reports:
        raise ValueError("choose_mode needs the parity report of at least one mode")
    by_mode = {r.quantization: r for r in reports}
    timings = {r.quantization.value: round(r.us_per_window, 2) for r in reports}
    passing = [r for r in reports if r.passed and r.quantization in AUTO_MODES]
    fastest: ParityReport | None = None
    if passing:
        quickest = min(r.us_per_window for r in passing)
        ties = [r for r in passing if r.us_per_window <= quickest * (1.0 + tolerance)]
        fastest = min(ties, key=lambda r: ALL_MODES.index(r.quantization))
    runtime = reports[0].runtime
    failed = [r.quantization.value for r in reports if not r.passed]
    tail = f"; failed the parity gate: {', '.join(failed)}" if failed else ""
    left_out = [r.quantization.value for r in reports if r.quantization not in AUTO_MODES]
    if left_out:
        tail += f"; {', '.join(left_out)} not considered (tflite-runtime 2.14 cannot load it)"
    speeds = ", ".join(f"{m} {us:.1f} µs" for m, us in timings.items())
    if requested == AUTO:
        if fastest is None:
            passed_any = any(r.passed for r in reports)
            # the record keeps a mode auto may publish, which then fails the gate and is not
            candidates = [r for r in reports if r.quantization in AUTO_MODES] or list(reports)
            best = max(candidates, key=lambda r: r.decision_agreement)
            return ModeChoice(
                mode=best.quantization, requested=AUTO, fastest_passing=None,
                us_per_window=timings,
                reason=f"no mode {'that every edge runtime loads ' if passed_any else ''}"
                f"passed the parity gate ({speeds}){tail}; {best.quantization.value} "
                f"agrees best ({best.decision_agreement:.4f}) and will not be published",
            )
        return ModeChoice(
            mode=fastest.quantization, requested=AUTO, fastest_passing=fastest.quantization,
            us_per_window=timings,
            reason=f"{fastest.quantization.value}: the fastest mode that passed the parity gate "
            f"on {runtime} ({speeds}; within {tolerance:.0%} counts as a tie){tail}",
        )
    mode = Quantization(requested)
    if mode not in by_mode:
        raise ValueError(f"mode {mode.value} was not measured (measured: {list(timings)})")
    if fastest is None or fastest.quantization is mode:
        note = "" if fastest is None else ", also the fastest that passed the parity gate"
        reason = f"{mode.value} as requested{note} ({speeds} on {runtime}){tail}"
    else:
        reason = (
            f"{mode.value} as requested; {fastest.quantization.value} passed the parity gate and "
            f"is faster on {runtime} ({speeds}){tail}; train with quantization=auto to pick it"
        )
    return ModeChoice(mode=mode, requested=mode.value, fastest_passing=None if fastest is None
                      else fastest.quantization, us_per_window=timings, reason=reason)


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
                "input_dtype": r.input_dtype,
                "detail": r.detail,
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
