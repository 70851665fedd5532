"""Keras → TFLite in the four quantization modes the hub can publish.

``int8`` is full-integer: every op computes in int8, calibrated on a representative dataset of
training windows, with one scale per dense layer's weights (per-channel scales and int64 zero
points cost 24 bytes per output unit: 8 KB of the default model's 29 KB) unless ``per_channel``.
Its input and output tensors stay float32: a QUANTIZE op first and a DEQUANTIZE op last do in the
interpreter (about 0.1 µs with XNNPACK) what numpy did around each call on the device (2 µs of
ufunc overheads before, 10 µs with ``np.clip``/``np.round``), so the device feeds float32
(``InputSpec.dtype``). ``float16`` stores weights as float16, ``dynamic`` stores weights as int8
with float activations, ``float32`` is the plain conversion.

Speed of the default model (dense AE, 256 values, 17k multiply-adds), one window per invoke
through the agent's call (``TfliteModel.reconstruct``). An invoke is mostly fixed work; the
arithmetic is ~0.1 µs. Counted with callgrind (instructions per call; immune to load) on the
2-core AMD EPYC (AVX2, no AVX-512) of the benches, ai-edge-litert 2.3:

- the XNNPACK delegate runs the whole int8 graph (QUANTIZE, 4 FULLY_CONNECTED, DEQUANTIZE):
  11.8k instructions per native invoke against 15.4k for float32 (int8 weights, 16 KB, stay in
  L1; the float ones, 66 KB, do not). Without the delegate (resolver
  ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``) int8 takes ~5 µs per invoke instead of ~1.6.
- around it, ``set_tensor``/``invoke``/``get_tensor`` cost ~18k instructions; the runtime now
  writes into views of the tensors and calls the native invoke (``edge_agent.inference.runtime``):
  per-window call int8 29.5k -> 21.6k, float32 34.2k -> 25.0k instructions.
- int8 input/output with the quantizing done in numpy instead costs 5 ufunc calls per window:
  ~11 µs against ~4 (load 15): QUANTIZE/DEQUANTIZE stay in the graph.
- per-channel weight scales: the same ops, a file ~35% larger (int64 zero points and a scale per
  output unit), so per-tensor unless the gate needs per-channel.

An earlier machine of the same kind (Xeon, AVX-512 VNNI) timed the int8 invoke 0.27 µs slower
than float32 (1.34 vs 1.07 µs); the machine decides, which is why ``quantization = "auto"``
(:mod:`cloud_hub.quantize.compare`) times the modes through the agent's own call. At 64 windows
per invoke int8 is faster than float32 on both.
tflite-runtime 2.14 (the legacy runtime, numpy<2) delegates float32 to XNNPACK but not int8: int8
runs on its builtin kernels there, far slower than float32 (see ``bench/edge.py``'s legacy
figures), and it cannot load ``dynamic`` at all.
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
