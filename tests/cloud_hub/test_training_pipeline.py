"""run_training end to end on tiny synthetic data: real Keras, real converter, device runtime."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from cloud_hub.training.artifact import ModelArtifact, TrainingProgress, TrainingSpec
from cloud_hub.training.pipeline import TrainingCancelled, TrainingError, run_training
from edge_agent.inference.runtime import TfliteModel
from shared.manifest import Quantization
from shared.scoring import normalize, sliding_windows, smooth, window_scores

pytestmark = pytest.mark.hub

CHANNELS = ["flow", "pressure", "current", "temp"]
WINDOW = 16
TINY = TrainingSpec(window=WINDOW, hidden=16, latent=4, epochs=4, batch_size=32, seed=1)


def pump_readings(rows: int, seed: int) -> np.ndarray:
    """Correlated periodic channels with noise: a stand-in for a healthy pump."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    base = np.sin(2 * np.pi * t / 40.0)
    return np.stack(
        [
            10 + 2 * base,
            3 + 0.5 * base + 0.2 * np.cos(2 * np.pi * t / 7.0),
            5 - 1.0 * base,
            60 + 0.3 * np.sin(2 * np.pi * t / 20.0),
        ],
        axis=1,
    ) + 0.05 * rng.normal(size=(rows, 4))


@pytest.fixture(scope="module")
def trained() -> tuple[ModelArtifact, list[TrainingProgress]]:
    updates: list[TrainingProgress] = []
    readings = np.concatenate([pump_readings(500, 1), pump_readings(500, 2)])
    artifact = run_training(readings, CHANNELS, TINY, segments=[500, 500], progress=updates.append)
    return artifact, updates


def device_scores(artifact: ModelArtifact, readings: np.ndarray) -> np.ndarray:
    """Score readings exactly as an agent would: normalise, window, TFLite, score, smooth."""
    model = TfliteModel(artifact.tflite)
    windows = sliding_windows(normalize(readings, artifact.normalization), artifact.input.window)
    raw = window_scores(windows, model.reconstruct_many(windows), artifact.score)
    return smooth(raw, artifact.score.smoothing)


def test_pipeline_returns_int8_model_that_loads_on_the_device_runtime(trained) -> None:
    artifact, _ = trained
    model = TfliteModel(artifact.tflite)
    model.check_input(WINDOW, len(CHANNELS))
    # int8 inside, float32 at its edges: the manifest says what the device feeds
    assert model.input_dtype == np.float32
    assert artifact.input.dtype == "float32"
    assert artifact.input.channels == CHANNELS
    assert artifact.parity.quantization is Quantization.INT8
    assert artifact.parity.runtime == model.runtime
    assert len(artifact.tflite) < artifact.float_size


def test_int8_model_passes_parity_on_clean_data(trained) -> None:
    artifact, _ = trained
    assert artifact.parity.passed, artifact.parity.failure_reason()
    assert artifact.parity.failure_reason() is None
    assert artifact.parity.windows > 0
    assert artifact.parity.score_correlation is not None
    assert artifact.parity.score_correlation > 0.9
    assert artifact.parity.us_per_window > 0


def test_progress_goes_through_every_stage_in_order(trained) -> None:
    _, updates = trained
    stages = [u.stage for u in updates]
    order = ["preparing", "fitting", "thresholding", "converting", "parity", "done"]
    assert [s for s in order if s in stages] == order
    assert stages.index("done") == len(stages) - 1
    epochs = [u for u in updates if u.stage == "fitting" and u.epoch > 0]
    assert epochs and all(u.loss is not None and np.isfinite(u.loss) for u in epochs)
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_device_path_flags_a_spike_and_not_normal_operation(trained) -> None:
    artifact, _ = trained
    normal = pump_readings(400, 7)
    normal_flags = device_scores(artifact, normal) > artifact.threshold
    assert normal_flags.mean() < 0.05
    faulty = normal.copy()
    faulty[200:210, 1] += 8.0  # pressure spike
    faulty_flags = device_scores(artifact, faulty) > artifact.threshold
    assert faulty_flags[190:215].any()


def test_channel_max_scores_in_each_channels_held_out_error_and_flags_a_frozen_sensor() -> None:
    spec = replace(TINY, score_reduce="channel_max", compare_modes=False)
    readings = np.concatenate([pump_readings(500, 1), pump_readings(500, 2)])
    artifact = run_training(readings, CHANNELS, spec, segments=[500, 500])
    scale = artifact.score.channel_scale
    assert scale is not None and len(scale) == len(CHANNELS) and min(scale) > 0
    assert artifact.parity.passed, artifact.parity.failure_reason()
    normal = pump_readings(400, 7)
    assert (device_scores(artifact, normal) > artifact.threshold).mean() < 0.05
    stuck = normal.copy()
    stuck[200:260, 1] = stuck[200, 1]  # the pressure sensor freezes for 60 readings
    assert device_scores(artifact, stuck)[200:245].max() > artifact.threshold


def test_threshold_method_is_recorded(trained) -> None:
    artifact, _ = trained
    assert artifact.threshold_method.startswith("quantile 0.999")
    assert np.isfinite(artifact.threshold) and artifact.threshold > 0
    assert artifact.training_rows == 800  # 80% of each 500-row segment
    assert artifact.validation["flagged_fraction"] <= 0.02


@pytest.mark.parametrize("family", ["conv1d_ae", "pca"])
def test_other_families_train_and_convert(family: str) -> None:
    spec = TrainingSpec(
        family=family, window=WINDOW, hidden=8, latent=3, epochs=2, compare_modes=False
    )
    artifact = run_training(pump_readings(1500, 3), CHANNELS, spec)
    model = TfliteModel(artifact.tflite)
    model.check_input(WINDOW, len(CHANNELS))
    assert artifact.input.layout == ("sequence" if family == "conv1d_ae" else "flat")
    assert artifact.parity.passed, artifact.parity.failure_reason()


def test_cancel_during_fitting_raises_training_cancelled() -> None:
    cancel = threading.Event()
    seen: list[TrainingProgress] = []

    def on_progress(update: TrainingProgress) -> None:
        seen.append(update)
        if update.stage == "fitting" and update.epoch >= 1:
            cancel.set()

    spec = TrainingSpec(
        window=WINDOW, hidden=8, latent=3, epochs=200, patience=0, compare_modes=False
    )
    with pytest.raises(TrainingCancelled):
        run_training(pump_readings(400, 4), CHANNELS, spec, progress=on_progress, cancel=cancel)
    assert max(u.epoch for u in seen) < 200
    assert "done" not in [u.stage for u in seen]


def test_cancel_before_start_stops_without_training() -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrainingCancelled):
        run_training(pump_readings(400, 4), CHANNELS, TINY, cancel=cancel)


@pytest.mark.parametrize(
    ("readings", "channels", "kwargs", "message"),
    [
        (pump_readings(30, 0), CHANNELS, {}, "too few readings"),
        (pump_readings(400, 0)[:, :3], CHANNELS, {}, "readings have 3 channels but 4"),
        (np.zeros((400,)), CHANNELS, {}, "rows × channels"),
        (pump_readings(400, 0), ["a", "a", "b", "c"], {}, "unique"),
        (pump_readings(400, 0), CHANNELS, {"segments": [100, 200]}, "segments add up to 300"),
        (pump_readings(400, 0), CHANNELS, {"segments": [0, 400]}, "positive row counts"),
        (pump_readings(400, 0), CHANNELS, {"labels": np.zeros(10)}, "one value per reading"),
        (pump_readings(400, 0), CHANNELS, {"labels": np.full(400, 2)}, "0 or 1"),
    ],
)
def test_bad_input_raises_training_error_with_the_reason(readings, channels, kwargs, message):
    with pytest.raises(TrainingError, match=message):
        run_training(readings, channels, TINY, **kwargs)


def test_nan_reading_is_refused_naming_row_and_channel() -> None:
    readings = pump_readings(400, 0)
    readings[123, 2] = np.nan
    with pytest.raises(TrainingError, match=r"row 123, channel 'current'"):
        run_training(readings, CHANNELS, TINY)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TrainingSpec(family="gru"), "spec.family 'gru' is unknown"),
        (TrainingSpec(window=1), "spec.window must be between 2"),
        (TrainingSpec(family="conv1d_ae", window=30), "multiple of 4"),
        (TrainingSpec(threshold_quantile=1.5), "spec.threshold_quantile"),
        (TrainingSpec(quantization="int4"), "spec.quantization"),  # type: ignore[arg-type]
        (TrainingSpec(threshold_method="f1"), "needs per-reading labels"),
        (TrainingSpec(representative_scale=0.5), "spec.representative_scale"),
        (TrainingSpec(score_reduce="median"), "spec.score_reduce must be mean or channel_max"),
    ],
)
def test_bad_spec_raises_training_error_naming_the_field(spec: TrainingSpec, message: str):
    with pytest.raises(TrainingError, match=message):
        run_training(pump_readings(400, 0), CHANNELS, spec)


def test_every_quantization_mode_is_measured_beside_the_chosen_one(trained) -> None:
    from cloud_hub.quantize.compare import format_comparison

    artifact, _ = trained
    rows = {row["quantization"]: row for row in artifact.extra["modes"]}
    assert set(rows) == {"int8", "float16", "dynamic", "float32"}
    assert rows["float32"]["decision_agreement"] == 1.0
    assert rows["float32"]["size_bytes"] == artifact.float_size
    assert rows["int8"]["size_bytes"] == len(artifact.tflite)
    assert rows["int8"]["decision_agreement"] == artifact.parity.decision_agreement
    assert rows["int8"]["size_ratio"] < rows["float16"]["size_ratio"] < 1.0
    assert rows["int8"]["detail"] == "per-tensor weight scales"
    table = format_comparison(artifact.extra["modes"])
    assert all(mode in table for mode in rows)


def test_the_result_says_which_mode_was_chosen_and_how_fast_every_mode_was(trained) -> None:
    artifact, _ = trained
    choice = artifact.extra["quantization_choice"]
    assert choice["mode"] == "int8"
    assert choice["requested"] == "int8"
    assert set(choice["us_per_window"]) == {"int8", "float16", "dynamic", "float32"}
    assert all(us > 0 for us in choice["us_per_window"].values())
    assert choice["reason"].startswith("int8 as requested")


def test_auto_publishes_a_mode_that_passed_the_gate_and_says_why() -> None:
    readings = np.concatenate([pump_readings(500, 1), pump_readings(500, 2)])
    spec = TrainingSpec(window=WINDOW, hidden=16, latent=4, epochs=4, batch_size=32, seed=1,
                        quantization="auto")
    artifact = run_training(readings, CHANNELS, spec, segments=[500, 500])
    choice = artifact.extra["quantization_choice"]
    assert choice["requested"] == "auto"
    assert artifact.parity.passed
    assert artifact.parity.quantization.value == choice["mode"] == choice["fastest_passing"]
    assert "the fastest mode that passed the parity gate" in choice["reason"]
    assert TfliteModel(artifact.tflite).input_dtype.name == artifact.input.dtype
    # every int8/float32 variant that passed the gate is kept beside it (issue 12)
    rows = {row["quantization"]: row for row in artifact.extra["modes"]}
    kept = {m for m in ("int8", "float32") if rows[m]["passed"]} - {choice["mode"]}
    assert set(artifact.variants) == kept
    assert artifact.extra["variants"] == sorted(kept | {choice["mode"]})
    for mode, variant in artifact.variants.items():
        assert variant.parity.passed and variant.parity.quantization.value == mode
        assert TfliteModel(variant.tflite).reconstruct  # loads in the edge runtime
