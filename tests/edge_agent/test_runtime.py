"""The device runtime: float windows in, float reconstructions out, whatever the model's I/O."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_agent.inference.runtime import ModelLoadError, TfliteModel, load_interpreter_class
from tests.edge_agent.support import fixture_bytes

REPO = Path(__file__).resolve().parents[2]

INT8_IO = fixture_bytes("ae_int8_w8c2.tflite")  # int8 input and output tensors
INT8 = fixture_bytes("ae_int8float_w8c2.tflite")  # as the hub publishes int8: float32 I/O
FLOAT32 = fixture_bytes("ae_float32_w8c2.tflite")
ALL = pytest.mark.parametrize("data", [INT8_IO, INT8, FLOAT32], ids=["int8-io", "int8", "float32"])


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)


class Reference:
    """The model in a plain interpreter of the same runtime, driven only through its public API
    (set_tensor, invoke, get_tensor), quantizing by hand with TFLite's rule where the model's
    input and output are integers."""

    def __init__(self, data: bytes) -> None:
        _, interpreter_cls = load_interpreter_class()
        self.interp = interpreter_cls(model_content=data, num_threads=1)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.reshape(self.inp["shape"]).astype(np.float32)
        if self.inp["dtype"] == np.int8:
            scale, zero = self.inp["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        if self.out["dtype"] == np.int8:
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, dtype=np.float32).reshape(-1)


@ALL
def test_each_window_gives_what_the_interpreters_public_api_gives(data: bytes) -> None:
    model, reference = TfliteModel(data), Reference(data)
    for x in windows(50):
        np.testing.assert_array_equal(model.reconstruct(x), reference(x))


def test_an_int8_io_model_is_fed_and_read_like_tflite_would() -> None:
    model = TfliteModel(INT8_IO)
    assert model.input_dtype == np.int8
    reference = Reference(INT8_IO)
    for x in windows(20):
        np.testing.assert_array_equal(model.reconstruct(x), reference(x))


@pytest.mark.parametrize("data", [INT8_IO, INT8], ids=["int8-io", "int8"])
def test_values_beyond_the_int8_range_saturate_instead_of_wrapping_around(data: bytes) -> None:
    model, reference = TfliteModel(data), Reference(data)
    huge = np.full(16, 1e6, dtype=np.float32)
    np.testing.assert_array_equal(model.reconstruct(huge), reference(huge))
    np.testing.assert_array_equal(model.reconstruct(-huge), reference(-huge))


@ALL
def test_the_window_is_written_into_the_input_tensor_and_read_from_the_output_one(
    data: bytes,
) -> None:
    """The agent's per-window call runs on views of the model's tensors bound once at load, with
    the optimized builtin kernels plus the runtime's XNNPACK delegate (what it reports)."""
    model = TfliteModel(data)
    assert model.io == "views"
    assert model.resolver == "BUILTIN"
    x = windows(1)[0]
    y = model.reconstruct(x)
    if model.input_dtype == np.float32:
        np.testing.assert_array_equal(model._x, x)  # the window is in the input tensor itself
    np.testing.assert_array_equal(model._y if model.output_dtype == np.float32
                                  else Reference(data)(x), y)
    assert not np.shares_memory(y, model._y)


def test_xnnpack_runs_what_the_runtime_lets_it_run() -> None:
    """litert's XNNPACK takes the whole graph, int8 included; tflite-runtime 2.14's takes float32
    only (int8 falls to its builtin kernels: see cloud_hub/quantize/convert.py)."""
    runtime = load_interpreter_class()[0]
    assert TfliteModel(FLOAT32).delegate == "xnnpack"
    int8_runs_on = "builtin" if runtime == "tflite_runtime" else "xnnpack"
    assert TfliteModel(INT8).delegate == int8_runs_on
    assert TfliteModel(INT8_IO).delegate == int8_runs_on


def test_the_interpreter_alone_can_be_run_again_on_the_window_in_place() -> None:
    model = TfliteModel(FLOAT32)
    x = windows(1)[0]
    first = model.reconstruct(x)
    model.invoke()
    np.testing.assert_array_equal(model._y, first)


def test_the_returned_reconstruction_is_the_callers_to_keep() -> None:
    for data in (INT8_IO, INT8, FLOAT32):
        model = TfliteModel(data)
        x = windows(2)
        first = model.reconstruct(x[0])
        kept = first.copy()
        model.reconstruct(x[1])
        np.testing.assert_array_equal(first, kept)


@ALL
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
    for wrong in (15, 17, 1):  # a single value would broadcast over the input: refused too
        with pytest.raises(ValueError):
            model.reconstruct(np.zeros(wrong, dtype=np.float32))


def test_bytes_that_are_not_a_model_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="refused the model"):
        TfliteModel(b"not a tflite model")


@ALL
def test_the_in_place_path_gives_what_reconstruct_gives(data: bytes) -> None:
    """The agent's per-window path: the window written into window_input, reconstruct_input()
    read in place; for the hub's models (float32 in and out) both are the tensors themselves."""
    model, reference = TfliteModel(data), TfliteModel(data)
    for x in windows(30, seed=3):
        model.window_input[:] = x
        np.testing.assert_array_equal(model.reconstruct_input(), reference.reconstruct(x))
    direct = model.input_dtype == model.output_dtype == np.float32
    assert np.shares_memory(model.window_input, model._x) is direct
    assert np.shares_memory(model.reconstruct_input(), model._y) is direct


def test_the_installed_runtime_is_found_without_importing_it() -> None:
    """What the first status names before any model loads: found by its spec and .dist-info,
    with nothing of the runtime (nor importlib.metadata) loaded into the daemon for it."""
    script = textwrap.dedent("""
        import json, sys
        from edge_agent.inference.runtime import installed_runtime
        found = installed_runtime()
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("ai_edge_litert", "tflite_runtime", "tensorflow")
                        or m == "importlib.metadata")
        print(json.dumps({"found": found and [found.package, found.version], "loaded": loaded}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    package = load_interpreter_class()[0]
    top = sys.modules[load_interpreter_class()[1].__module__.split(".")[0]]
    assert report["found"] == [package, str(top.__version__)], "the one that loads, its version"


def test_a_forced_runtime_that_is_not_installed_is_not_named(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.inference import runtime

    runtime.installed_runtime.cache_clear()
    monkeypatch.setattr(runtime, "RUNTIME_ORDER", (("no_such_runtime", "no_such_runtime.x"),))
    try:
        assert runtime.installed_runtime() is None
    finally:
        runtime.installed_runtime.cache_clear()
