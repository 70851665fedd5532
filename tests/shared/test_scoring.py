"""The agent's one-window scoring gives the hub's batch scoring's numbers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from shared.manifest import Normalization, ScoreSpec
from shared.scoring import (
    Normalizer,
    WindowNormalizer,
    WindowScorer,
    normalize,
    window_score,
    window_scores,
)


@pytest.mark.parametrize("method", ["mse", "mae"])
def test_one_window_score_equals_the_batch_score_exactly(method: str) -> None:
    rng = np.random.default_rng(7)
    windows = rng.normal(size=(300, 32, 8)).astype(np.float32)
    recon = (windows.reshape(300, -1) + rng.normal(scale=0.3, size=(300, 256))).astype(np.float32)
    spec = ScoreSpec(method=method)  # type: ignore[arg-type]
    batch = window_scores(windows, recon, spec)
    one = np.array([window_score(w, r, spec) for w, r in zip(windows, recon, strict=True)])
    np.testing.assert_array_equal(one, batch)


def test_normalizer_gives_the_float32_numbers_of_the_plain_formula() -> None:
    rng = np.random.default_rng(3)
    norm = Normalization(method="zscore", center=[0.5, -2.0, 1e3], scale=[0.1, 3.0, 250.0])
    for values in (rng.normal(size=(32, 3)), rng.normal(size=(32, 3)).astype(np.float32)):
        center = np.asarray(norm.center, dtype=np.float32)
        scale = np.asarray(norm.scale, dtype=np.float32)
        expected = ((np.asarray(values, dtype=np.float32) - center) / scale).astype(np.float32)
        for got in (Normalizer(norm)(values), normalize(values, norm)):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected)


def test_normalizing_into_a_buffer_gives_the_normalizers_numbers() -> None:
    rng = np.random.default_rng(4)
    norm = Normalization(method="zscore", center=[0.5, -2.0, 1e3], scale=[0.1, 3.0, 250.0])
    out = np.empty((32, 3), dtype=np.float32)
    for values in (rng.normal(size=(32, 3)), rng.normal(size=(32, 3)).astype(np.float32)):
        WindowNormalizer(norm, 32)(values, out)
        np.testing.assert_array_equal(out, Normalizer(norm)(values))


@pytest.mark.parametrize("method", ["mse", "mae"])
def test_the_window_scorer_gives_window_score_exactly(method: str) -> None:
    rng = np.random.default_rng(8)
    spec = ScoreSpec(method=method)  # type: ignore[arg-type]
    scorer = WindowScorer(256, spec)
    for _ in range(50):
        x = rng.normal(size=256).astype(np.float32)
        y = (x + rng.normal(scale=0.3, size=256)).astype(np.float32)
        assert scorer(x, y) == window_score(x.reshape(32, 8), y, spec)
