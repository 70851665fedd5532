"""The one place that imports a TFLite interpreter.

Order of preference: ``ai_edge_litert`` (maintained, numpy 2), ``tflite_runtime`` (legacy wheel,
numpy<2), ``tensorflow.lite`` (heavy last resort). ``EDGELOOP_TFLITE_RUNTIME`` forces one of them.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "RUNTIME_ORDER",
    "ModelLoadError",
    "TfliteModel",
    "available_runtime",
    "load_interpreter_class",
    "quiet_runtime_stderr",
]

log = logging.getLogger(__name__)

RUNTIME_ORDER = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)


class ModelLoadError(RuntimeError):
    """A model file the interpreter refuses, or whose input does not fit what is expected."""


class _Interpreter(Protocol):
    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, index: int, value: Any) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, index: int) -> Any: ...


_cached: tuple[str, Any] | None = None


def load_interpreter_class() -> tuple[str, Any]:
    """The first importable runtime, as (package name, Interpreter class)."""
    global _cached
    if _cached is not None:
        return _cached
    forced = os.environ.get("EDGELOOP_TFLITE_RUNTIME", "").strip()
    order = [r for r in RUNTIME_ORDER if not forced or r[0] == forced]
    if forced and not order:
        raise ModelLoadError(
            f"EDGELOOP_TFLITE_RUNTIME={forced!r} is not one of {[r[0] for r in RUNTIME_ORDER]}"
        )
    errors = []
    for package, module_name in order:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{package}: {exc}")
            continue
        _cached = (package, module.Interpreter)
        log.info("TFLite runtime: %s", package)
        return _cached
    raise ModelLoadError("no TFLite runtime could be imported: " + "; ".join(errors))


def available_runtime() -> str:
    return load_interpreter_class()[0]


# The runtime's native logger prints this to the C stderr when it creates its default delegate
# (once per process). It is not a log record, the runtime exports no way to raise its log
# level, and TF_CPP_MIN_LOG_LEVEL does not reach it: only a file-descriptor filter removes it.
_RUNTIME_CHATTER = re.compile(rb"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$")
_stderr_lock = threading.Lock()


@contextmanager
def quiet_runtime_stderr() -> Iterator[None]:
    """Hold fd 2 meanwhile and pass every line on afterwards except the runtime's chatter."""
    with _stderr_lock, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True)
                    if not _RUNTIME_CHATTER.match(line.rstrip(b"\r\n"))]
            if kept:
                os.write(2, b"".join(kept))


class TfliteModel:
    """A loaded model: float windows in, float reconstructions out, quantization handled here."""

    def __init__(self, model_bytes: bytes, *, num_threads: int = 1) -> None:
        self.runtime, interpreter_cls = load_interpreter_class()
        try:
            with quiet_runtime_stderr():
                self._interp: _Interpreter = interpreter_cls(
                    model_content=model_bytes, num_threads=num_threads
                )
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"the interpreter refused the model: {exc}") from None
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"expected one input and one output tensor, got {len(inputs)} and {len(outputs)}"
            )
        self._in, self._out = inputs[0], outputs[0]
        self.input_shape: tuple[int, ...] = tuple(int(x) for x in self._in["shape"])
        self.output_shape: tuple[int, ...] = tuple(int(x) for x in self._out["shape"])
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self._in_scale, self._in_zero = _quant_params(self._in)
        self._out_scale, self._out_zero = _quant_params(self._out)
        self._in_index = int(self._in["index"])
        self._out_index = int(self._out["index"])
        if self.input_dtype in (np.int8, np.uint8) and self._in_scale == 0.0:
            raise ModelLoadError("integer model input has no quantization scale")

    @property
    def window_size(self) -> int:
        """Number of values one window holds (product of the input shape without the batch)."""
        return int(np.prod(self.input_shape[1:]))

    def check_input(self, window: int, channels: int) -> None:
        """Raise :class:`ModelLoadError` unless the model takes ``window`` × ``channels`` values."""
        if self.input_shape[0] != 1 or self.window_size != window * channels:
            raise ModelLoadError(
                f"model input shape {list(self.input_shape)} does not fit a window of {window} "
                f"readings × {channels} channels"
            )
        if int(np.prod(self.output_shape[1:])) != window * channels:
            raise ModelLoadError(
                f"model output shape {list(self.output_shape)} is not a reconstruction of its input"
            )

    def reconstruct(self, window: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Run one normalised window (any shape holding window_size values)."""
        x = np.asarray(window, dtype=np.float32).reshape(self.input_shape)
        if self.input_dtype in (np.int8, np.uint8):
            info = np.iinfo(self.input_dtype)
            q = np.round(x / self._in_scale + self._in_zero)
            x_in: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(self.input_dtype)
        else:
            x_in = x.astype(self.input_dtype, copy=False)
        self._interp.set_tensor(self._in_index, x_in)
        self._interp.invoke()
        y = self._interp.get_tensor(self._out_index)
        if self.output_dtype in (np.int8, np.uint8):
            deq: npt.NDArray[np.float32] = (y.astype(np.float32) - self._out_zero) * self._out_scale
            return deq.reshape(-1)
        return np.asarray(y, dtype=np.float32).reshape(-1)

    def reconstruct_many(self, windows: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        out = np.empty((len(windows), self.window_size), dtype=np.float32)
        for i, w in enumerate(windows):
            out[i] = self.reconstruct(w)
        return out


def _quant_params(detail: dict[str, Any]) -> tuple[float, int]:
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    zeros = params.get("zero_points")
    if scales is not None and len(scales) == 1:
        return float(scales[0]), int(zeros[0]) if zeros is not None else 0
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)
