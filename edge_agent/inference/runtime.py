"""The one place that imports a TFLite interpreter.

Order of preference: ``ai_edge_litert`` (maintained, numpy 2), ``tflite_runtime`` (legacy wheel,
numpy<2), ``tensorflow.lite`` (heavy last resort). ``EDGELOOP_TFLITE_RUNTIME`` forces one of them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.inference.quantized_io import Dequantizer, Quantizer, quant_params
from edge_agent.inference.runtime_stderr import quiet_runtime_stderr
from shared.messages import AgentRuntime

__all__ = [
    "RUNTIME_ORDER",
    "ModelLoadError",
    "TfliteModel",
    "available_runtime",
    "installed_runtime",
    "load_interpreter_class",
    "loaded_runtime",
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
    order = _forced_order()
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


# Whether the package's default XNNPACK delegate takes int8 graphs, as measured (bench/edge.py:
# litert runs int8 and float32 on it; tflite-runtime 2.14 runs int8 on its builtin kernels, 73.6
# against 5.1 us float32). A package not measured says no: that points the hub at float32,
# which every XNNPACK takes.
_XNNPACK_INT8 = {"ai_edge_litert": True, "tflite_runtime": False}


def loaded_runtime() -> AgentRuntime | None:
    """The runtime this process loads models with (package, version, whether XNNPACK runs
    int8), or None before the first load: the status does not import a runtime to say so."""
    if _cached is None:
        return None
    package, interpreter_cls = _cached
    top = sys.modules.get(interpreter_cls.__module__.split(".")[0])
    version = str(getattr(top, "__version__", ""))[:64]
    return AgentRuntime(package=package, version=version,
                        xnnpack_int8=_XNNPACK_INT8.get(package, False))


def _forced_order() -> list[tuple[str, str]]:
    forced = os.environ.get("EDGELOOP_TFLITE_RUNTIME", "").strip()
    return [r for r in RUNTIME_ORDER if not forced or r[0] == forced]


@functools.lru_cache(maxsize=1)
def installed_runtime() -> AgentRuntime | None:
    """The runtime the first model load will most likely use, found without importing it: the
    first package of the preference order that is installed, with the version its
    ``.dist-info`` folder names. It lets the first status, before any model has loaded, tell the
    hub which variant to send (a tflite-runtime device gets float32 from its first model on).
    :func:`loaded_runtime` replaces it once a model has loaded (a package that is installed but
    fails to import is not the one that runs)."""
    for package, module_name in _forced_order():
        top = module_name.split(".")[0]
        try:
            spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        return AgentRuntime(package=package, version=_dist_version(spec, top),
                            xnnpack_int8=_XNNPACK_INT8.get(package, False))
    return None


def _dist_version(spec: importlib.machinery.ModuleSpec, top: str) -> str:
    """The version in ``<top>-<version>.dist-info`` beside the package, or "" (importlib.metadata
    would load email and zipfile into the daemon for one string)."""
    locations = list(spec.submodule_search_locations or [])
    folder = os.path.dirname(locations[0] if locations else spec.origin or "")
    try:
        names = os.listdir(folder)
    except OSError:
        return ""
    prefix = top + "-"
    for name in names:
        if name.startswith(prefix) and name.endswith(".dist-info"):
            return name[len(prefix):-len(".dist-info")][:64]
    return ""


def available_runtime() -> str:
    return load_interpreter_class()[0]


class TfliteModel:
    """A loaded model: float windows in, float reconstructions out.

    The hub's int8 models take and return float32: their first and last ops quantize and
    dequantize inside the interpreter (XNNPACK does it in about 0.1 µs). Models with int8 input or
    output tensors (published before that) are quantized here with preallocated buffers.

    The per-window call writes the window straight into the input tensor and copies the output
    tensor out, through numpy views of the two tensors bound once at load, and runs the
    interpreter without the Python wrapper's check for such views (see :meth:`_bind`):
    ``set_tensor``/``invoke``/``get_tensor`` cost ~18k instructions around a 12-15k instruction
    native invoke (callgrind, the hub's default model), the views ~10k. ``io`` says which way is
    in use, ``delegate`` what runs the graph, ``resolver`` which kernels the interpreter has.
    """

    def __init__(self, model_bytes: bytes, *, num_threads: int = 1) -> None:
        self.runtime, interpreter_cls = load_interpreter_class()
        self._interpreter_cls = interpreter_cls
        self._model_bytes = model_bytes
        self._num_threads = num_threads
        self._interp: _Interpreter = self._new_interpreter()
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
        self._in_index = int(self._in["index"])
        self._out_index = int(self._out["index"])
        for detail, dtype, side in ((self._in, self.input_dtype, "input"),
                                    (self._out, self.output_dtype, "output")):
            if dtype not in (np.float32, np.int8, np.uint8):
                raise ModelLoadError(f"model {side} dtype {dtype} is not float32, int8 or uint8")
            if dtype != np.float32 and quant_params(detail)[0] == 0.0:
                raise ModelLoadError(f"integer model {side} has no quantization scale")
        self._quantizer = (
            Quantizer(self._in, self.input_dtype, self.input_shape)
            if self.input_dtype != np.float32 else None
        )
        self._dequantizer = (
            Dequantizer(self._out, self.output_shape)
            if self.output_dtype != np.float32 else None
        )
        self.resolver = _RESOLVER
        self._input_size = int(np.prod(self.input_shape))
        self.io: str  # "views" or "copies"
        self.invoke: Callable[[], None]  # the interpreter alone
        self.io, self._x, self._y, self.invoke = self._bind()
        # The agent's per-window path (Detector, bench/edge.py): the caller writes the window
        # into ``window_input`` (flat, window_size values) and ``reconstruct_input()`` returns
        # its reconstruction without a copy in or out. For the hub's models (float32 in and out,
        # bound as views) ``window_input`` is the input tensor itself and the result is the
        # output tensor: one native invoke and a closure call, where ``reconstruct`` adds a
        # reshape, a copy in and a copy out. The result is the model's until the next call:
        # read it before, never write to it. Otherwise both wrap ``reconstruct``.
        self.window_input: npt.NDArray[np.float32]
        self.reconstruct_input: Callable[[], npt.NDArray[np.float32]]
        self.window_input, self.reconstruct_input = self._bind_in_place()
        self._batch: Any = None  # a second interpreter sized for reconstruct_batch
        self._batch_size = 0

    @functools.cached_property
    def delegate(self) -> str:
        """Which kernels run the graph: "xnnpack" when the runtime's default delegate took it
        (litert takes int8 and float32; tflite-runtime 2.14 takes float32 only, and runs int8
        on its builtin kernels), else "builtin". Read on first use: listing the graph's ops
        cost as much as a fifth of a model's load (py-spy, 1,000 devices loading a model)."""
        return _delegate_of(self._interp)

    def _new_interpreter(self) -> Any:
        options: dict[str, Any] = {"num_threads": self._num_threads}
        resolvers = getattr(sys.modules[self._interpreter_cls.__module__], "OpResolverType", None)
        if resolvers is not None:  # BUILTIN: the optimized kernels plus the default XNNPACK
            options["experimental_op_resolver_type"] = getattr(resolvers, _RESOLVER)
        try:
            with quiet_runtime_stderr():
                interp = self._interpreter_cls(model_content=self._model_bytes, **options)
                interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"the interpreter refused the model: {exc}") from None
        return interp

    def _bind(self) -> tuple[str, Any, Any, Any]:
        """Flat numpy views of the input and output tensors, and the interpreter's native invoke.

        The wrapper's ``invoke()`` refuses to run while any such view exists, because
        ``allocate_tensors``/``resize_tensor_input`` may move the tensors. This interpreter is
        never resized or re-allocated after load (batches get their own), so the tensors stay
        where they are, and graph inputs and outputs are never reused for other tensors by the
        arena planner. A runtime without the native object, or a model whose input or output
        has no memory until invoke (a dynamic tensor), falls back to copies (``io``)."""
        native = getattr(self._interp, "_interpreter", None)
        invoke = getattr(native, "Invoke", None)
        tensor = getattr(self._interp, "tensor", None)
        if invoke is None or tensor is None:
            return "copies", None, None, self._interp.invoke
        try:
            x = tensor(self._in_index)().reshape(-1)
            y = tensor(self._out_index)().reshape(-1)
        except ValueError:
            # "Tensor data is null": a tensor the runtime allocates at each invoke (a dynamic
            # tensor; the hub's conv1d_ae has one). Its memory may move, so no view of it.
            return "copies", None, None, self._interp.invoke
        if x.base is None or y.base is None:  # not views into the interpreter: copies after all
            return "copies", None, None, self._interp.invoke
        return "views", x, y, invoke

    def _bind_in_place(
        self,
    ) -> tuple[npt.NDArray[np.float32], Callable[[], npt.NDArray[np.float32]]]:
        x, y, invoke = self._x, self._y, self.invoke
        if x is not None and self._quantizer is None and self._dequantizer is None:
            def run() -> npt.NDArray[np.float32]:
                invoke()
                return y  # type: ignore[no-any-return]

            return x, run
        window = np.zeros(self._input_size, dtype=np.float32)
        return window, lambda: self.reconstruct(window)

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
        """Run one normalised window (any shape holding window_size values); the result is a
        fresh array the caller may keep.

        The per-window path of the agent: every numpy call here costs about 0.3 µs, about as
        much as the model itself, so there are as few as possible (see ``bench/edge.py``)."""
        x = self._x
        if x is None:
            return self._reconstruct_by_copies(window)
        flat = window.reshape(self._input_size)  # ValueError unless it holds window_size values
        if self._quantizer is None:
            np.copyto(x, flat)
        else:
            self._quantizer.into(flat, x)
        self.invoke()
        if self._dequantizer is not None:
            return self._dequantizer(self._y)
        y: npt.NDArray[np.float32] = self._y.copy()
        return y

    def _reconstruct_by_copies(self, window: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        x = np.asarray(window, dtype=np.float32).reshape(self.input_shape)
        interp = self._interp
        if self._quantizer is not None:
            x = self._quantizer.many(x)
        interp.set_tensor(self._in_index, x)
        interp.invoke()
        y: npt.NDArray[Any] = interp.get_tensor(self._out_index)  # a copy the caller may keep
        if self._dequantizer is not None:
            return self._dequantizer(y)
        return y.reshape(-1)

    def reconstruct_many(self, windows: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Every window through :meth:`reconstruct`, one at a time: exactly the agent's path."""
        out = np.empty((len(windows), self.window_size), dtype=np.float32)
        for i, w in enumerate(windows):
            out[i] = self.reconstruct(w)
        return out

    def reconstruct_batch(
        self, windows: npt.NDArray[np.floating], batch_size: int = 64
    ) -> npt.NDArray[np.float32]:
        """Many windows, ``batch_size`` per invoke (about 10× less time per window than one at a
        time). Integer models give the same numbers as :meth:`reconstruct`; float kernels may
        sum in another order (differences around 1e-7). Falls back to one at a time for a model
        whose batch dimension cannot be resized."""
        x = np.asarray(windows, dtype=np.float32).reshape(len(windows), -1)
        if len(x) <= 1 or batch_size <= 1:
            return self.reconstruct_many(x)
        size = min(batch_size, len(x))
        interp = self._batch_interpreter(size)
        if interp is None:
            return self.reconstruct_many(x)
        shape = (size, *self.input_shape[1:])
        out = np.empty((len(x), self.window_size), dtype=np.float32)
        for start in range(0, len(x), size):
            part = x[start : start + size]
            n = len(part)
            if n < size:  # the last, short batch: pad with zeros, keep the first n rows
                part = np.concatenate([part, np.zeros((size - n, part.shape[1]), np.float32)])
            block = part.reshape(shape)
            if self._quantizer is not None:
                block = self._quantizer.many(block)
            interp.set_tensor(self._in_index, block)
            interp.invoke()
            y = interp.get_tensor(self._out_index).reshape(size, -1)[:n]
            if self._dequantizer is not None:
                y = self._dequantizer.many(y)
            out[start : start + n] = y
        return out

    def _batch_interpreter(self, size: int) -> Any:
        if self._batch is not None and self._batch_size == size:
            return self._batch
        try:
            interp = self._new_interpreter()
            with quiet_runtime_stderr():
                interp.resize_tensor_input(self._in_index, [size, *self.input_shape[1:]])
                interp.allocate_tensors()
            if tuple(interp.get_output_details()[0]["shape"])[0] != size:
                return None
        except (ValueError, RuntimeError) as exc:
            log.info("batch of %d not possible for this model (%s); one window at a time",
                     size, exc)
            return None
        self._batch, self._batch_size = interp, size
        return interp


# The optimized builtin kernels with the runtime's default delegate (XNNPACK), as AUTO picks. On
# litert the alternatives measured slower for the default model: without the delegate int8
# takes ~5 µs per invoke instead of ~1.5 (float32 ~3.7 instead of ~2.3).
_RESOLVER = "BUILTIN"


def _delegate_of(interp: Any) -> str:
    """"xnnpack" when a delegate node runs (part of) the graph, else "builtin"."""
    try:
        ops = interp._get_ops_details()
    except AttributeError:  # no introspection: say nothing that is not known
        return "unknown"
    return "xnnpack" if any(op.get("op_name") == "DELEGATE" for op in ops) else "builtin"
