"""Keras → TFLite in every mode, loaded back through the device runtime."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cloud_hub.quantize.convert import ConversionError, convert, keras_reconstruct
from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.families import get_family, to_layout
from cloud_hub.training.tf_env import seed_everything
from edge_agent.inference.runtime import TfliteModel
from shared.manifest import Quantization

pytestmark = pytest.mark.hub

WINDOW, CHANNELS = 8, 3


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    t = np.arange(600)
    rng = np.random.default_rng(0)
    signal = np.stack([np.sin(t / 5.0), np.cos(t / 5.0), np.sin(t / 11.0)], axis=1)
    signal = signal + 0.05 * rng.normal(size=signal.shape)
    view = np.lib.stride_tricks.sliding_window_view(signal, WINDOW, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def dense_model(windows: np.ndarray):
    flat = to_layout(windows, "flat")
    seed_everything(0)
    spec = TrainingSpec(window=WINDOW, hidden=8, latent=3, epochs=2, batch_size=32)
    return get_family("dense_ae").train(
        flat, flat[:100], spec, on_epoch=lambda *a: None, cancel=threading.Event()
    )


@pytest.mark.parametrize(
    ("mode", "input_dtype"),
    [
        (Quantization.INT8, np.float32),  # int8 inside; QUANTIZE/DEQUANTIZE at its edges
        (Quantization.FLOAT16, np.float32),
        (Quantization.DYNAMIC, np.float32),
        (Quantization.FLOAT32, np.float32),
    ],
)
def test_every_mode_converts_and_reconstructs_like_keras(dense_model, windows, mode, input_dtype):
    flat = to_layout(windows, "flat")
    tflite = convert(dense_model, mode, representative=flat)
    model = TfliteModel(tflite)
    model.check_input(WINDOW, CHANNELS)
    assert model.input_dtype == input_dtype
    expected = keras_reconstruct(dense_model, flat[:50])
    got = model.reconstruct_many(flat[:50])
    assert np.abs(got - expected).mean() < 0.05 * np.abs(expected).mean() + 1e-3


def test_int8_file_is_at_most_35_percent_of_float32() -> None:
    # Untrained is enough for sizes: the default 32-reading × 8-channel dense AE.
    from cloud_hub.training.tf_env import import_keras

    keras = import_keras()
    inputs = keras.Input((256,))
    x = keras.layers.Dense(32, activation="relu")(inputs)
    x = keras.layers.Dense(8, activation="relu")(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(256)(x))
    sample = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    int8 = convert(model, Quantization.INT8, representative=sample)
    float32 = convert(model, Quantization.FLOAT32)
    float16 = convert(model, Quantization.FLOAT16)
    assert len(int8) <= 0.35 * len(float32)  # per-tensor weight scales (per-channel: 0.41)
    assert len(int8) < len(float16) < len(float32)
    per_channel = convert(model, Quantization.INT8, representative=sample, per_channel=True)
    assert len(int8) < len(per_channel)


def test_int8_without_a_representative_dataset_is_refused(dense_model) -> None:
    with pytest.raises(ConversionError, match="representative dataset"):
        convert(dense_model, Quantization.INT8)


def test_representative_windows_of_the_wrong_shape_are_refused(dense_model, windows) -> None:
    with pytest.raises(ConversionError, match=r"shape \[8, 3\], the model takes \[24\]"):
        convert(dense_model, "int8", representative=windows)


def test_unknown_mode_is_refused(dense_model) -> None:
    with pytest.raises(ValueError, match="int4"):
        convert(dense_model, "int4")


def test_conversion_hides_only_the_known_converter_chatter(capfd) -> None:
    import os

    from cloud_hub.training.tf_env import quiet_conversion

    with quiet_conversion():
        os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8\n")
        os.write(2, b"E tensorflow: something real went wrong\n")
    err = capfd.readouterr().err
    assert "something real went wrong" in err
    assert "fully_quantize" not in err
