"""Keras → TFLite in the four quantization modes the hub can publish.

``int8`` is full-integer: every op computes in int8, calibrated on a representative dataset of
training windows, with one scale per dense layer's weights (per-channel scales and int64 zero
points cost 24 bytes per output unit: 8 KB of the default model's 29 KB) unless ``per_channel``.
Its input and output tensors stay float32: a QUANTIZE op first and a DEQUANTIZE op last do in the
interpreter (about 0.1 µs with XNNPACK) what numpy did around each call on the device (2 µs of
ufunc overheads before, 10 µs with ``np.clip``/``np.round``), so the device feeds float32
(``InputSpec.dtype``). ``float16`` stores weights as float16, ``dynamic`` stores weights as int8
with float activations, ``float32`` is the plain conversion.

Speed of the default model (dense AE, 256 values, 17k multiply-adds) one window per invoke, on
the 2-core Xeon (AVX-512 VNNI) of the benches: ai-edge-litert's XNNPACK delegate runs the whole
int8 graph (QUANTIZE, 4 FULLY_CONNECTED, DEQUANTIZE), but an invoke costs ~1 µs of fixed work
whatever the mode, and the arithmetic ~0.1 µs, so int8 cannot win there: its two extra operators
cost ~0.1 µs and its per-window call is 10-27% slower than float32 (2.5-3.1 vs 2.1-2.4 µs).
With int8 input and output instead, quantizing in numpy costs 8.9 µs per window. At 64 windows
per invoke, where the arithmetic counts, int8 is 1.6x faster than float32 (0.13 vs 0.22 µs per
window in invoke). tflite-runtime 2.14's XNNPACK takes no int8 op: int8 runs on the builtin
kernels there, 5 µs per invoke against 1.3 µs for float32, and it cannot load ``dynamic`` at all.
That is why ``quantization = "auto"`` (:mod:`cloud_hub.quantize.compare`) picks float16 or float32
for this model, and why ``int8`` (the default) is about size: 30% of the float file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_hub.training.tf_env import import_tensorflow, quiet_conversion
from shared.manifest import Quantization

__all__ = ["REPRESENTATIVE_SAMPLES", "ConversionError", "convert", "keras_reconstruct"]

REPRESENTATIVE_SAMPLES = 300


class ConversionError(RuntimeError):
    """The converter refused the model or the inputs to the conversion are wrong."""


def convert(
    model: Any,
    quantization: Quantization | str,
    *,
    representative: npt.NDArray[np.floating] | None = None,
    per_channel: bool = False,
) -> bytes:
    """TFLite bytes of ``model``; ``representative`` (windows in the model's input layout) is
    required for int8 and ignored otherwise. The model's batch dimension becomes 1.
    ``per_channel`` gives int8 dense layers one weight scale per output unit."""
    mode = Quantization(quantization)
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode is Quantization.INT8:
        samples = _representative_samples(model, representative)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _feed(samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # inference_input_type / inference_output_type stay float32: see the module's docstring
        converter._experimental_disable_per_channel_quantization_for_dense_layers = (
            not per_channel
        )
    elif mode is Quantization.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode is Quantization.DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        with quiet_conversion():
            result = converter.convert()
    except Exception as exc:  # the converter raises many unrelated types
        raise ConversionError(f"TFLite conversion ({mode.value}) failed: {exc}") from exc
    return bytes(result)


def keras_reconstruct(
    model: Any, windows: npt.NDArray[np.floating], batch_size: int = 1024
) -> npt.NDArray[np.float32]:
    """The float model's reconstructions, flattened to (n, window·channels)."""
    x = np.asarray(windows, dtype=np.float32)
    out = np.empty((len(x), int(np.prod(x.shape[1:]))), dtype=np.float32)
    for i in range(0, len(x), batch_size):
        chunk = model(x[i : i + batch_size], training=False)
        out[i : i + batch_size] = np.asarray(chunk).reshape(len(chunk), -1)
    return out


def _representative_samples(
    model: Any, representative: npt.NDArray[np.floating] | None
) -> npt.NDArray[np.float32]:
    if representative is None or len(representative) == 0:
        raise ConversionError("int8 conversion needs a representative dataset of windows")
    data = np.asarray(representative, dtype=np.float32)
    expected = tuple(int(d) for d in model.input_shape[1:])
    if data.shape[1:] != expected:
        raise ConversionError(
            f"representative windows have shape {list(data.shape[1:])}, "
            f"the model takes {list(expected)}"
        )
    if not np.isfinite(data).all():
        raise ConversionError("representative windows contain NaN or infinite values")
    if len(data) > REPRESENTATIVE_SAMPLES:
        pick = np.linspace(0, len(data) - 1, REPRESENTATIVE_SAMPLES).round().astype(np.int64)
        data = data[pick]
    return data


def _feed(samples: npt.NDArray[np.float32]) -> Iterator[list[npt.NDArray[np.float32]]]:
    for sample in samples:
        yield [sample[None, ...]]
