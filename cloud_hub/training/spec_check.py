"""Checking a training spec before a job spends anything on it: every field against its bound
in :mod:`cloud_hub.training.limits`, then the model family's own check."""

from __future__ import annotations

from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.errors import TrainingError
from cloud_hub.training.families import FAMILIES, get_family
from cloud_hub.training.limits import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_HIDDEN,
    MAX_LATENT,
    MAX_PATIENCE,
    MAX_SEED,
    MAX_SMOOTHING,
    MAX_STRIDE,
    MAX_THRESHOLD_FACTOR,
    MAX_TRAIN_WINDOWS,
    MAX_WINDOW,
    MIN_TRAIN_WINDOWS,
)
from shared.manifest import Quantization

__all__ = ["check_spec"]


def check_spec(spec: TrainingSpec, channels: int) -> None:
    """Raise :class:`TrainingError` for the first spec field out of range."""
    if spec.family not in FAMILIES:
        raise TrainingError(
            f"spec.family {spec.family!r} is unknown; choose one of {', '.join(FAMILIES)}"
        )
    rules: list[tuple[str, bool, str]] = [
        ("window", 2 <= spec.window <= MAX_WINDOW, f"between 2 and {MAX_WINDOW}"),
        ("train_stride", 1 <= spec.train_stride <= MAX_STRIDE, f"between 1 and {MAX_STRIDE}"),
        ("score_stride", 1 <= spec.score_stride <= MAX_STRIDE, f"between 1 and {MAX_STRIDE}"),
        ("hidden", 1 <= spec.hidden <= MAX_HIDDEN, f"between 1 and {MAX_HIDDEN}"),
        ("latent", 1 <= spec.latent <= MAX_LATENT, f"between 1 and {MAX_LATENT}"),
        ("epochs", 1 <= spec.epochs <= MAX_EPOCHS, f"between 1 and {MAX_EPOCHS}"),
        ("batch_size", 1 <= spec.batch_size <= MAX_BATCH_SIZE,
         f"between 1 and {MAX_BATCH_SIZE}"),
        ("learning_rate", 0 < spec.learning_rate < 1, "in (0, 1)"),
        ("validation_fraction", 0.05 <= spec.validation_fraction <= 0.5, "in [0.05, 0.5]"),
        ("normalization", spec.normalization in ("zscore", "minmax"), "zscore or minmax"),
        ("score_method", spec.score_method in ("mse", "mae"), "mse or mae"),
        ("score_reduce", spec.score_reduce in ("mean", "channel_max"), "mean or channel_max"),
        ("smoothing", 1 <= spec.smoothing <= MAX_SMOOTHING, f"between 1 and {MAX_SMOOTHING}"),
        ("threshold_method", spec.threshold_method in ("quantile", "f1"), "quantile or f1"),
        ("threshold_quantile", 0.5 <= spec.threshold_quantile < 1, "in [0.5, 1)"),
        ("threshold_factor", 0 < spec.threshold_factor <= MAX_THRESHOLD_FACTOR,
         f"in (0, {MAX_THRESHOLD_FACTOR:g}]"),
        ("quantization", spec.quantization in {q.value for q in Quantization} | {"auto"},
         "a mode or auto"),
        ("min_agreement", 0 <= spec.min_agreement <= 1, "in [0, 1]"),
        ("max_train_windows", MIN_TRAIN_WINDOWS <= spec.max_train_windows <= MAX_TRAIN_WINDOWS,
         f"between {MIN_TRAIN_WINDOWS} and {MAX_TRAIN_WINDOWS}"),
        ("patience", 0 <= spec.patience <= MAX_PATIENCE, f"between 0 and {MAX_PATIENCE}"),
        ("seed", 0 <= spec.seed <= MAX_SEED, f"between 0 and {MAX_SEED}"),
        ("representative_scale", 1.0 <= spec.representative_scale <= 100.0, "in [1, 100]"),
    ]
    for field_name, ok, expected in rules:
        if not ok:
            value = getattr(spec, field_name)
            raise TrainingError(f"spec.{field_name} must be {expected}, got {value!r}")
    reason = get_family(spec.family).check(spec, channels)
    if reason:
        raise TrainingError(f"spec.window: {reason}")
