"""Window, normalise and score: the numeric steps the hub trains with and the agent runs.

Both sides call these functions, so a model is scored the same way where it was trained, where
its quantization was checked, and on the device.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shared.manifest import Normalization, ScoreSpec

__all__ = [
    "Normalizer",
    "WindowNormalizer",
    "WindowScorer",
    "channel_errors",
    "fit_normalization",
    "normalize",
    "responsible_channels",
    "sliding_windows",
    "smooth",
    "window_score",
    "window_scores",
]

FloatArray = npt.NDArray[np.float32]
_MIN_SCALE = 1e-6


def fit_normalization(values: npt.NDArray[np.floating], method: str = "zscore") -> Normalization:
    """Per-channel statistics of training readings (rows × channels)."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(
            f"need at least 2 readings × channels to fit normalization, got {data.shape}"
        )
    if method == "zscore":
        center, scale = data.mean(axis=0), data.std(axis=0)
    elif method == "minmax":
        center, scale = data.min(axis=0), data.max(axis=0) - data.min(axis=0)
    else:
        raise ValueError(f"unknown normalization method {method!r} (zscore or minmax)")
    scale = np.maximum(scale, _MIN_SCALE)
    return Normalization(
        method="zscore" if method == "zscore" else "minmax",
        center=[float(x) for x in center],
        scale=[float(x) for x in scale],
    )


class Normalizer:
    """:func:`normalize` with the statistics converted to arrays once (the agent normalizes a
    window for every reading: two ufunc calls instead of seven, the same float32 numbers)."""

    def __init__(self, norm: Normalization) -> None:
        self.center = np.asarray(norm.center, dtype=np.float32)
        self.scale = np.asarray(norm.scale, dtype=np.float32)

    def __call__(self, values: npt.NDArray[np.floating]) -> FloatArray:
        x: FloatArray = np.subtract(values, self.center, dtype=np.float32)
        np.divide(x, self.scale, out=x)
        return x


class WindowNormalizer:
    """:class:`Normalizer` for windows of ``rows`` readings, written into a given array (e.g. the
    model's input tensor). Its statistics are tiled to the window's shape once, so that both
    ufuncs run their plain contiguous loops: on 32 × 8, 0.5 µs each instead of 1.4 when they
    broadcast, and float32 readings skip ``dtype=`` (~3 µs more). The same float32 numbers."""

    def __init__(self, norm: Normalization, rows: int) -> None:
        plain = Normalizer(norm)
        shape = (rows, plain.center.size)
        self.center = np.ascontiguousarray(np.broadcast_to(plain.center, shape))
        self.scale = np.ascontiguousarray(np.broadcast_to(plain.scale, shape))

    def __call__(self, values: npt.NDArray[np.floating], out: FloatArray) -> None:
        """``values`` and ``out``: ``rows`` × channels."""
        if values.dtype == np.float32:
            np.subtract(values, self.center, out=out)
        else:
            np.subtract(values, self.center, out=out, dtype=np.float32)
        np.divide(out, self.scale, out=out)


def normalize(values: npt.NDArray[np.floating], norm: Normalization) -> FloatArray:
    return Normalizer(norm)(np.asarray(values))


def sliding_windows(values: npt.NDArray[np.floating], window: int, stride: int = 1) -> FloatArray:
    """All windows of ``window`` consecutive rows, ``stride`` rows apart: (n, window, channels)."""
    data = np.asarray(values, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"expected readings × channels, got shape {data.shape}")
    if data.shape[0] < window:
        return np.empty((0, window, data.shape[1]), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(data, window, axis=0)  # (n, c, window)
    return np.ascontiguousarray(view[::stride].transpose(0, 2, 1))


def window_scores(
    windows: npt.NDArray[np.floating], reconstructed: npt.NDArray[np.floating], spec: ScoreSpec
) -> npt.NDArray[np.float64]:
    """One score per window from its reconstruction error (no smoothing here)."""
    x = np.asarray(windows, dtype=np.float64).reshape(len(windows), -1)
    y = np.asarray(reconstructed, dtype=np.float64).reshape(len(windows), -1)
    err = np.abs(x - y) if spec.method == "mae" else (x - y) ** 2
    if spec.channel_scale is None:
        result: npt.NDArray[np.float64] = err.mean(axis=1)
        return result
    factors = _channel_factors(err.shape[1], spec)
    sums = err.reshape(len(err), -1, len(factors)).sum(axis=1)
    worst: npt.NDArray[np.float64] = (sums * factors).max(axis=1)
    return worst


def channel_errors(err: npt.NDArray[np.float64], channels: int) -> npt.NDArray[np.float64]:
    """Each channel's mean error over its window: (windows, window × channels) errors, laid out
    reading by reading, to (windows, channels)."""
    _check_fits(err.shape[1], channels)
    result: npt.NDArray[np.float64] = err.reshape(len(err), -1, channels).mean(axis=1)
    return result


def _check_fits(size: int, channels: int) -> None:
    if size % channels:
        raise ValueError(f"windows of {size} values do not hold {channels} channels")


def _channel_factors(size: int, spec: ScoreSpec) -> npt.NDArray[np.float64]:
    """What a channel's error sum over a window is multiplied by for ``channel_max``: one over
    (readings per window × the channel's scale), so that the score is its mean error in units of
    its scale, in one multiply."""
    assert spec.channel_scale is not None
    scale = np.asarray(spec.channel_scale, dtype=np.float64)
    _check_fits(size, len(scale))
    factors: npt.NDArray[np.float64] = 1.0 / ((size // len(scale)) * scale)
    return factors


def window_score(
    window: npt.NDArray[np.floating], reconstructed: npt.NDArray[np.floating], spec: ScoreSpec
) -> float:
    """:func:`window_scores` of one window (the same float64 numbers, bit for bit)."""
    return WindowScorer(window.size, spec)(window.reshape(-1), reconstructed.reshape(-1))


class WindowScorer:
    """:func:`window_scores` for flat windows of one size, into buffers made once: the same
    float64 numbers, bit for bit, without the reshapes and the new arrays per window (the agent
    scores a window for every reading)."""

    def __init__(self, size: int, spec: ScoreSpec) -> None:
        self._d = np.empty(size, dtype=np.float64)
        self._size = size
        self._error = np.abs if spec.method == "mae" else np.square
        self._factors: npt.NDArray[np.float64] | None = None
        if spec.channel_scale is not None:
            self._factors = _channel_factors(size, spec)
            self._rows = self._d.reshape(-1, len(self._factors))
            self._sums = np.empty(len(self._factors), dtype=np.float64)

    def __call__(self, window: FloatArray, reconstructed: FloatArray) -> float:
        """``window`` and ``reconstructed``: flat, ``size`` values each."""
        d = self._d
        np.subtract(window, reconstructed, out=d, dtype=np.float64)
        self._error(d, out=d)
        if self._factors is None:
            return float(np.add.reduce(d)) / self._size
        sums = self._sums
        np.add.reduce(self._rows, axis=0, out=sums)  # the order window_scores sums in
        np.multiply(sums, self._factors, out=sums)
        return max(sums.tolist())  # 8 floats: quicker than a numpy reduction


def smooth(scores: npt.NDArray[np.floating], n: int) -> npt.NDArray[np.float64]:
    """Trailing mean over the last ``n`` scores (the first ones average what there is)."""
    s = np.asarray(scores, dtype=np.float64)
    if n <= 1 or len(s) == 0:
        return s
    csum = np.cumsum(np.concatenate([[0.0], s]))
    idx = np.arange(1, len(s) + 1)
    lo = np.maximum(idx - n, 0)
    out: npt.NDArray[np.float64] = (csum[idx] - csum[lo]) / (idx - lo)
    return out


def responsible_channels(
    window: npt.NDArray[np.floating],
    reconstructed: npt.NDArray[np.floating],
    channels: list[str],
    top: int = 3,
    channel_scale: list[float] | None = None,
) -> list[str]:
    """The channels with the largest reconstruction error in one (window, channels) window,
    each in units of its ``channel_scale`` when the score uses one."""
    x = np.asarray(window, dtype=np.float64).reshape(-1, len(channels))
    y = np.asarray(reconstructed, dtype=np.float64).reshape(-1, len(channels))
    per_channel = ((x - y) ** 2).mean(axis=0)
    if channel_scale is not None:
        per_channel = per_channel / np.asarray(channel_scale, dtype=np.float64)
    order = np.argsort(per_channel)[::-1][:top]
    return [channels[i] for i in order]
