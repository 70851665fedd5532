"""The device runtime: float windows in, float reconstructions out, whatever the model's I/O."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.inference.runtime import ModelLoadError, TfliteModel
from tests.edge_agent.support import fixture_bytes

INT8_IO = fixture_bytes("ae_int8_w8c2.tflite")  # int8 input and output tensors
FLOAT32 = fixture_bytes("ae_float32_w8c2.tflite")


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)


def reference_int8(model: TfliteModel, x: np.ndarray) -> np.ndarray:
    """The model run by hand: quantize with TFLite's rule, invoke, dequantize."""
    interp = model._interp
    (scale, zero), (oscale, ozero) = (d["quantization"] for d in (model._in, model._out))
    q = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    interp.set_tensor(model._in_index, q.reshape(model.input_shape))
    interp.invoke()
    y = interp.get_tensor(model._out_index).astype(np.float32)
    return ((y - ozero) * oscale).reshape(-1)


def test_an_int8_io_model_is_fed_and_read_like_tflite_would() -> None:
    model = TfliteModel(INT8_IO)
    assert model.input_dtype == np.int8
    for x in windows(20):
        np.testing.assert_array_equal(model.reconstruct(x), reference_int8(model, x))


def test_values_beyond_the_int8_range_saturate_instead_of_wrapping_around() -> None:
    model = TfliteModel(INT8_IO)
    huge = np.full(16, 1e6, dtype=np.float32)
    np.testing.assert_array_equal(model.reconstruct(huge), reference_int8(model, huge))
    np.testing.assert_array_equal(model.reconstruct(-huge), reference_int8(model, -huge))


def test_the_returned_reconstruction_is_the_callers_to_keep() -> None:
    for data in (INT8_IO, FLOAT32):
        model = TfliteModel(data)
        x = windows(2)
        first = model.reconstruct(x[0])
        kept = first.copy()
        model.reconstruct(x[1])
        np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("data", [INT8_IO, FLOAT32], ids=["int8-io", "float32"])
def test_a_batch_gives_what_one_window_at_a_time_gives(data: bytes) -> None:
    model = TfliteModel(data)
    x = windows(70)  # one full batch of 32, one of 32, and a short one of 6
    one_by_one = model.reconstruct_many(x)
    batched = model.reconstruct_batch(x, batch_size=32)
    assert batched.shape == (70, 16)
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-6)


def test_window_shape_is_free_but_size_is_checked() -> None:
    model = TfliteModel(FLOAT32)
    x = windows(1)[0]
    np.testing.assert_array_equal(model.reconstruct(x.reshape(8, 2)), model.reconstruct(x))
    with pytest.raises(ValueError):
        model.reconstruct(np.zeros(15, dtype=np.float32))


def test_bytes_that_are_not_a_model_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="refused the model"):
        TfliteModel(b"not a tflite model")
