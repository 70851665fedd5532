"""What a training run produces, handed from the training pipeline to the registry.

These dataclasses are the contract between ``cloud_hub.training`` / ``cloud_hub.quantize`` (which
fill them) and the registry, REST API and publisher (which store and ship them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cloud_hub.core.states import TrainingStage
from shared.manifest import InputSpec, Normalization, ParitySummary, Quantization, ScoreSpec

__all__ = ["ArtifactVariant", "ModelArtifact", "ParityReport", "TrainingProgress", "TrainingSpec"]


@dataclass(frozen=True)
class TrainingSpec:
    """Everything that decides what gets trained; stored with the model as its hyper-parameters."""

    family: str = "dense_ae"  # dense_ae | conv1d_ae | pca
    window: int = 32
    train_stride: int = 1  # readings between two training windows
    score_stride: int = 1  # readings between two windows the agent scores
    hidden: int = 32
    latent: int = 8
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    normalization: str = "zscore"  # zscore | minmax
    score_method: str = "mse"  # mse | mae
    # mean: the mean error over the window's values; channel_max: the largest channel's mean
    # error in units of its typical error on the validation windows (a fault on one channel is
    # not averaged away)
    score_reduce: str = "mean"
    smoothing: int = 1
    threshold_method: str = "quantile"  # quantile | f1 (needs labelled validation data)
    threshold_quantile: float = 0.999
    threshold_factor: float = 1.0  # multiplies the chosen threshold (a safety margin)
    # "auto": the fastest mode that passes the parity gate (cloud_hub.quantize.compare)
    quantization: Quantization | Literal["auto"] = Quantization.INT8
    min_agreement: float = 0.99
    seed: int = 0
    max_train_windows: int = 12_000  # evenly subsampled beyond this, to bound training time
    patience: int = 3  # early stopping on validation loss (0: train all epochs)
    compare_modes: bool = True  # also measure every other quantization mode (extra["modes"])
    # int8 calibration also sees the training windows scaled by this, widening the quantized
    # input range for readings beyond training (1: the training windows as they are)
    representative_scale: float = 1.0


@dataclass(frozen=True)
class TrainingProgress:
    """One progress update: the stage and, while fitting, epoch and loss."""

    stage: TrainingStage
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    val_loss: float | None = None
    fraction: float = 0.0  # 0..1 over the whole job


@dataclass(frozen=True)
class ParityReport:
    """How far the converted model decides like the float model on held-out windows."""

    quantization: Quantization
    decision_agreement: float
    windows: int
    score_correlation: float | None
    max_score_error: float
    mean_score_error: float
    size_bytes: int
    float_size_bytes: int  # float32 TFLite of the same model
    us_per_window: float  # through the edge runtime
    runtime: str  # which interpreter package measured it
    min_agreement: float
    float_anomalies: int = 0  # windows the float model flags
    quantized_anomalies: int = 0
    input_dtype: str = "float32"  # what the device feeds the model (InputSpec.dtype)
    detail: str = ""  # how this mode was converted, when there was a choice (int8 weight scales)

    @property
    def passed(self) -> bool:
        return self.decision_agreement >= self.min_agreement

    def failure_reason(self) -> str | None:
        if self.passed:
            return None
        return (
            f"parity gate: decision_agreement {self.decision_agreement:.4f} is below the minimum "
            f"{self.min_agreement:.4f} ({self.quantization.value}, {self.windows} held-out windows)"
        )

    def summary(self) -> ParitySummary:
        return ParitySummary(
            decision_agreement=self.decision_agreement,
            windows=self.windows,
            score_correlation=self.score_correlation,
            max_score_error=self.max_score_error,
            mean_score_error=self.mean_score_error,
        )


@dataclass(frozen=True)
class ArtifactVariant:
    """Another quantization of the same model that passed the parity gate (issue 12): kept, and
    signed with the version, so that each device can be sent the one that runs fastest there."""

    tflite: bytes
    parity: ParityReport


@dataclass(frozen=True)
class ModelArtifact:
    """A trained, converted and parity-checked model, ready to be registered and signed."""

    spec: TrainingSpec
    channels: list[str]
    input: InputSpec
    normalization: Normalization
    score: ScoreSpec
    threshold: float
    threshold_method: str  # e.g. "quantile 0.999 of 2,400 validation scores × 1.0"
    tflite: bytes
    float_size: int  # bytes of the float32 TFLite conversion
    parity: ParityReport
    training_rows: int
    training_windows: int
    validation: dict[str, float] = field(default_factory=dict)  # e.g. loss, score quantiles
    train_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # quantization -> variant, beside the published one (``tflite``/``parity``); only with
    # quantization "auto", only variants that passed the gate
    variants: dict[str, ArtifactVariant] = field(default_factory=dict)
