"""Symmetric matrices on the wire: the upper triangle as base64 of little-endian float64.

A device's training statistics carry the scatter matrix of its normal windows this way
(:class:`shared.messages.TrainingStats`); both the agent (packing) and the hub (unpacking)
use these two functions.
"""

from __future__ import annotations

import base64

import numpy as np
import numpy.typing as npt

__all__ = ["pack_upper", "unpack_upper"]


def pack_upper(matrix: npt.NDArray[np.float64]) -> str:
    """The upper triangle (diagonal included, row by row) as base64 of little-endian float64."""
    rows, cols = np.triu_indices(matrix.shape[0])
    return base64.b64encode(np.ascontiguousarray(matrix[rows, cols], dtype="<f8").tobytes()
                            ).decode("ascii")


def unpack_upper(text: str, size: int) -> npt.NDArray[np.float64]:
    """The symmetric matrix :func:`pack_upper` packed; ValueError when the text does not fit."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    expected = size * (size + 1) // 2
    if len(raw) != 8 * expected:
        raise ValueError(f"scatter holds {len(raw) // 8} values; a {size}×{size} upper triangle "
                         f"has {expected}")
    values = np.frombuffer(raw, dtype="<f8")
    if not np.all(np.isfinite(values)):
        raise ValueError("scatter holds non-finite values")
    out = np.zeros((size, size))
    rows, cols = np.triu_indices(size)
    out[rows, cols] = values
    out[cols, rows] = values
    return out
