"""The training job: readings → windows → model → threshold → TFLite → parity → artifact.

``run_training`` is what the hub's job runner calls (in a worker thread). It never raises for a
failed parity gate: the artifact carries the report and the registry refuses to publish it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cloud_hub.core.states import TrainingStage
from cloud_hub.rollouts.variant import VARIANT_MODES
from cloud_hub.training.artifact import (
    ArtifactVariant,
    ModelArtifact,
    TrainingProgress,
    TrainingSpec,
)
from cloud_hub.training.dataset import Dataset, prepare_dataset
from cloud_hub.training.errors import TrainingCancelled, TrainingError
from cloud_hub.training.families import ModelFamily, get_family, to_layout
from cloud_hub.training.spec_check import check_spec
from cloud_hub.training.threshold import (
    ThresholdChoice,
    f1_optimal_threshold,
    quantile_threshold,
)
from shared.manifest import InputSpec, Quantization, ScoreSpec
from shared.scoring import channel_errors, window_scores

__all__ = [
    "FittedModel",
    "TrainingCancelled",
    "TrainingError",
    "check_spec",
    "convert_and_gate",
    "fit_model",
    "run_training",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[TrainingProgress], None]

# Share of the whole job each stage ends at (fitting dominates).
_FIT_START, _FIT_END, _CONVERT_END = 0.05, 0.8, 0.9


@dataclass(frozen=True)
class FittedModel:
    """A trained float model with its data and threshold, before any conversion."""

    model: Any  # keras.Model
    family: ModelFamily
    data: Dataset
    train_x: npt.NDArray[np.float32]  # training windows in the family's layout
    validation_x: npt.NDArray[np.float32]
    float_reconstructions: npt.NDArray[np.float32]  # float model output for validation_x
    validation_scores: npt.NDArray[np.float64]  # smoothed per segment, as the agent does
    score: ScoreSpec
    threshold: ThresholdChoice
    fit_seconds: float


def fit_model(
    readings: npt.NDArray[np.floating],
    channels: list[str],
    spec: TrainingSpec,
    *,
    segments: list[int] | None = None,
    labels: npt.NDArray[np.integer] | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> FittedModel:
    """The first half of :func:`run_training`: validate, window, fit, choose the threshold."""
    started = time.perf_counter()
    report = progress or (lambda update: None)

    report(TrainingProgress(stage=TrainingStage.PREPARING, epochs=spec.epochs))
    check_spec(spec, len(channels))
    if spec.threshold_method == "f1" and labels is None:
        raise TrainingError("threshold_method 'f1' needs per-reading labels")
    family = get_family(spec.family)
    data = prepare_dataset(readings, channels, spec, segments=segments, labels=labels)
    _check_cancel(cancel)

    # Imported here: TensorFlow is loaded by the first job, never at hub start-up.
    from cloud_hub.quantize.convert import keras_reconstruct
    from cloud_hub.quantize.parity import smoothed_scores
    from cloud_hub.training.tf_env import seed_everything

    seed_everything(spec.seed)
    train_x = to_layout(data.train, family.layout)
    val_x = to_layout(data.validation, family.layout)

    def on_epoch(epoch: int, epochs: int, loss: float | None, val_loss: float | None) -> None:
        report(
            TrainingProgress(
                stage=TrainingStage.FITTING,
                epoch=epoch,
                epochs=epochs,
                loss=loss,
                val_loss=val_loss,
                fraction=_FIT_START + (_FIT_END - _FIT_START) * epoch / max(epochs, 1),
            )
        )

    report(TrainingProgress(stage=TrainingStage.FITTING, epochs=spec.epochs, fraction=_FIT_START))
    model = family.train(train_x, _fit_subset(val_x), spec, on_epoch=on_epoch, cancel=cancel)
    _check_cancel(cancel)
    fit_seconds = time.perf_counter() - started

    report(TrainingProgress(stage=TrainingStage.THRESHOLDING, epochs=spec.epochs,
                            fraction=_FIT_END))
    float_rec = keras_reconstruct(model, val_x)
    score_spec = score_spec_for(spec, val_x, float_rec, len(channels))
    val_scores = smoothed_scores(
        window_scores(val_x, float_rec, score_spec), data.validation_lengths, spec.smoothing
    )
    choice = _choose_threshold(val_scores, data, spec)
    _check_cancel(cancel)
    return FittedModel(
        model=model,
        family=family,
        data=data,
        train_x=train_x,
        validation_x=val_x,
        float_reconstructions=float_rec,
        validation_scores=val_scores,
        score=score_spec,
        threshold=choice,
        fit_seconds=fit_seconds,
    )


def run_training(
    readings: npt.NDArray[np.floating],
    channels: list[str],
    spec: TrainingSpec,
    *,
    segments: list[int] | None = None,
    labels: npt.NDArray[np.integer] | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ModelArtifact:
    """Train, threshold, convert and parity-check a model on normal-operation ``readings``.

    Raises :class:`TrainingError` on bad input and :class:`TrainingCancelled` when ``cancel``
    is set; a failed parity gate is reported in ``artifact.parity``, not raised. With
    ``spec.compare_modes`` every quantization mode is measured too (``artifact.extra["modes"]``).
    """
    started = time.perf_counter()
    report = _Reporter(progress)
    fitted = fit_model(
        readings, channels, spec, segments=segments, labels=labels, progress=report, cancel=cancel
    )
    return convert_and_gate(fitted, channels, spec, report, cancel, started)


def convert_and_gate(fitted: FittedModel, channels: list[str], spec: TrainingSpec,
                     report: ProgressCallback, cancel: threading.Event | None,
                     started: float) -> ModelArtifact:
    """The second half of :func:`run_training`: convert, parity-check, build the artifact
    (also for a model fitted another way, e.g. from federated statistics)."""
    from cloud_hub.quantize.compare import (
        ALL_MODES,
        AUTO,
        choose_mode,
        compare_modes,
        comparison_rows,
    )

    report(TrainingProgress(stage=TrainingStage.CONVERTING, epochs=spec.epochs, fraction=_FIT_END))
    if spec.compare_modes or spec.quantization == AUTO:
        modes: tuple[Quantization, ...] = ALL_MODES
    else:
        modes = tuple(dict.fromkeys([Quantization(spec.quantization), Quantization.FLOAT32]))
    results = compare_modes(
        fitted.model,
        representative=_representative(fitted.train_x, spec.representative_scale),
        windows=fitted.validation_x,
        float_reconstructions=fitted.float_reconstructions,
        score=fitted.score,
        threshold=fitted.threshold.threshold,
        min_agreement=spec.min_agreement,
        lengths=fitted.data.validation_lengths,
        modes=modes,
    )
    _check_cancel(cancel)
    report(TrainingProgress(stage=TrainingStage.PARITY, epochs=spec.epochs, fraction=_CONVERT_END))
    choice = choose_mode([r.report for r in results.values()], spec.quantization)
    log.info("quantization: %s", choice.reason)
    chosen = results[choice.mode]
    parity = chosen.report
    if not parity.passed:
        log.warning("model failed the parity gate: %s", parity.failure_reason())
    data = fitted.data
    extra: dict[str, Any] = {
        "family": fitted.family.description,
        "fit_seconds": round(fitted.fit_seconds, 3),
        "available_train_windows": data.total_train_windows,
        "validation_windows": len(data.validation),
        "segments": len(data.validation_lengths),
        "quantization_choice": choice.to_dict(),
    }
    if spec.compare_modes:
        extra["modes"] = comparison_rows([r.report for r in results.values()])
    variants: dict[str, ArtifactVariant] = {}
    if spec.quantization == AUTO and parity.passed:
        # every variant a device may be sent instead (issue 12): those that passed the gate
        variants = {m.value: ArtifactVariant(tflite=r.tflite, parity=r.report)
                    for m, r in results.items()
                    if m.value in VARIANT_MODES and m is not choice.mode and r.report.passed}
        extra["variants"] = sorted([choice.mode.value, *variants])
    elapsed = time.perf_counter() - started
    report(TrainingProgress(stage=TrainingStage.DONE, epochs=spec.epochs, fraction=1.0))
    return ModelArtifact(
        spec=spec,
        channels=list(channels),
        input=InputSpec(
            window=spec.window,
            channels=list(channels),
            dtype=_input_dtype(parity.input_dtype),
            layout=fitted.family.layout,
            stride=spec.score_stride,
        ),
        normalization=data.normalization,
        score=fitted.score,
        threshold=fitted.threshold.threshold,
        threshold_method=fitted.threshold.method,
        tflite=chosen.tflite,
        float_size=parity.float_size_bytes,
        parity=parity,
        training_rows=data.training_rows,
        training_windows=len(data.train),
        validation=_validation_metrics(fitted.validation_scores, fitted.threshold, data),
        train_seconds=elapsed,
        extra=extra,
        variants=variants,
    )


def _input_dtype(name: str) -> Literal["float32", "int8", "uint8"]:
    if name not in ("float32", "int8", "uint8"):
        raise TrainingError(f"the converted model takes {name} input, which no device feeds")
    return "int8" if name == "int8" else "uint8" if name == "uint8" else "float32"


def _representative(train_x: npt.NDArray[np.float32], scale: float) -> npt.NDArray[np.float32]:
    if scale == 1.0:
        return train_x
    return np.concatenate([train_x, train_x * np.float32(scale)])


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise TrainingCancelled("training cancelled")


def _score_method(spec: TrainingSpec) -> Literal["mse", "mae"]:
    return "mae" if spec.score_method == "mae" else "mse"


# A channel the model reconstructs (almost) perfectly, e.g. one that never moved in training,
# is scaled as if its typical error were this share of the median channel's: otherwise the
# quantized model's rounding alone would send its score to the sky.
_MIN_CHANNEL_SCALE_SHARE = 0.01


def score_spec_for(spec: TrainingSpec, validation_x: npt.NDArray[np.float32],
                   float_reconstructions: npt.NDArray[np.float32], channels: int) -> ScoreSpec:
    """How the model's windows are scored. For ``channel_max``, each channel's typical error is
    its mean error on the held-out validation windows, by the float model: on the training
    windows a channel the model fits closely (a slow temperature) looked eight times quieter
    than it is on data the model has not seen, and the first unseen stretch of it set the
    threshold (on six simulated data sets the threshold ranged 11.9-22.2 that way, 10.2-14.1
    this way, simulator/README.md)."""
    method = _score_method(spec)
    if spec.score_reduce != "channel_max":
        return ScoreSpec(method=method, smoothing=spec.smoothing)
    n = len(validation_x)
    flat_x = np.asarray(validation_x, dtype=np.float64).reshape(n, -1)
    flat_y = np.asarray(float_reconstructions, dtype=np.float64).reshape(n, -1)
    err = np.abs(flat_x - flat_y) if method == "mae" else (flat_x - flat_y) ** 2
    typical = channel_errors(err, channels).mean(axis=0)
    floor = max(float(np.median(typical)) * _MIN_CHANNEL_SCALE_SHARE, 1e-12)
    return ScoreSpec(method=method, smoothing=spec.smoothing,
                     channel_scale=[max(float(t), floor) for t in typical])


def _fit_subset(val_x: npt.NDArray[np.float32], limit: int = 4000) -> npt.NDArray[np.float32]:
    """Validation windows Keras evaluates each epoch (a spread-out subset keeps epochs fast)."""
    if len(val_x) <= limit:
        return val_x
    return val_x[np.linspace(0, len(val_x) - 1, limit).round().astype(np.int64)]


def _choose_threshold(
    scores: npt.NDArray[np.float64], data: Dataset, spec: TrainingSpec
) -> ThresholdChoice:
    labels = data.validation_labels
    if spec.threshold_method == "f1":
        assert labels is not None  # checked before training
        return f1_optimal_threshold(scores, labels, spec.threshold_factor)
    normal = scores if labels is None else scores[labels == 0]
    return quantile_threshold(normal, spec.threshold_quantile, spec.threshold_factor)


def _validation_metrics(
    scores: npt.NDArray[np.float64], choice: ThresholdChoice, data: Dataset
) -> dict[str, float]:
    metrics = {
        "score_p50": float(np.quantile(scores, 0.5)),
        "score_p99": float(np.quantile(scores, 0.99)),
        "score_max": float(scores.max()),
        "flagged_fraction": float((scores > choice.threshold).mean()),
    }
    if choice.f1 is not None:
        metrics["f1"] = choice.f1
    if data.validation_labels is not None:
        metrics["anomalous_windows"] = float(data.validation_labels.sum())
    return metrics


class _Reporter:
    """Calls the job's progress callback; a failing callback is logged once, never fatal."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._failed = False

    def __call__(self, update: TrainingProgress) -> None:
        if self._callback is None:
            return
        try:
            self._callback(update)
        except Exception:
            if not self._failed:
                log.exception("training progress callback failed (stage %s)", update.stage)
                self._failed = True
