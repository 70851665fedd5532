"""Int8/uint8 input and output tensors of a TFLite model: floats quantized into the model's
input and its output dequantized, with the tensors' own scale and zero point, into buffers
allocated once (the per-window path allocates nothing)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Dequantizer", "Quantizer", "quant_params"]


class Quantizer:
    """float32 → int8/uint8 input, into preallocated buffers (np.clip alone costs 3 µs)."""

    def __init__(self, detail: dict[str, Any], dtype: np.dtype[Any], shape: tuple[int, ...]):
        scale, zero = quant_params(detail)
        info = np.iinfo(dtype)
        self.dtype = dtype
        self.inv_scale = np.float32(1.0 / scale)
        self.zero = np.float32(zero)
        self.low, self.high = np.float32(info.min), np.float32(info.max)
        self.buffer = np.empty(int(np.prod(shape)), dtype=np.float32)

    def into(self, x: npt.NDArray[np.float32], q: npt.NDArray[Any]) -> None:
        """Quantize the flat window ``x`` into ``q`` (the model's flat input tensor)."""
        self._into(x, self.buffer, q)

    def many(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        return self._into(x, np.empty_like(x), np.empty(x.shape, dtype=self.dtype))

    def _into(
        self, x: npt.NDArray[np.float32], buf: npt.NDArray[np.float32], q: npt.NDArray[Any]
    ) -> npt.NDArray[Any]:
        np.multiply(x, self.inv_scale, out=buf)
        np.add(buf, self.zero, out=buf)
        np.rint(buf, out=buf)
        np.maximum(buf, self.low, out=buf)
        np.minimum(buf, self.high, out=buf)
        np.copyto(q, buf, casting="unsafe")  # in range after the clip: the cast is exact
        return q


class Dequantizer:
    """int8/uint8 output → float32 reconstruction (a fresh array the caller may keep)."""

    def __init__(self, detail: dict[str, Any], shape: tuple[int, ...]):
        scale, zero = quant_params(detail)
        self.scale = np.float32(scale)
        self.zero = np.float32(zero)
        self.size = int(np.prod(shape[1:]))

    def __call__(self, y: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return self.many(y.reshape(1, -1)).reshape(-1)

    def many(self, y: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        out = y.astype(np.float32)
        np.subtract(out, self.zero, out=out)
        np.multiply(out, self.scale, out=out)
        return out


def quant_params(detail: dict[str, Any]) -> tuple[float, int]:
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    zeros = params.get("zero_points")
    if scales is not None and len(scales) == 1:
        return float(scales[0]), int(zeros[0]) if zeros is not None else 0
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)
