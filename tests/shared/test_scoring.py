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
    responsible_channels,
    window_score,
    window_scores,
)

SCALES = [0.5, 1.0, 2.0, 0.1, 1.5, 3.0, 0.7, 1.2]  # channel_max: one typical error per channel


@pytest.mark.parametrize("scale", [None, SCALES], ids=["mean", "channel_max"])
@pytest.mark.parametrize("method", ["mse", "mae"])
def test_one_window_score_equals_the_batch_score_exactly(
    method: str, scale: list[float] | None
) -> None:
    rng = np.random.default_rng(7)
    windows = rng.normal(size=(300, 32, 8)).astype(np.float32)
    recon = (windows.reshape(300, -1) + rng.normal(scale=0.3, size=(300, 256))).astype(np.float32)
    spec = ScoreSpec(method=method, channel_scale=scale)  # type: ignore[arg-type]
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


@pytest.mark.parametrize("scale", [None, SCALES], ids=["mean", "channel_max"])
@pytest.mark.parametrize("method", ["mse", "mae"])
def test_the_window_scorer_reused_gives_the_batch_scores_exactly(
    method: str, scale: list[float] | None
) -> None:
    rng = np.random.default_rng(8)
    spec = ScoreSpec(method=method, channel_scale=scale)  # type: ignore[arg-type]
    scorer = WindowScorer(256, spec)
    x = rng.normal(size=(50, 256)).astype(np.float32)
    y = (x + rng.normal(scale=0.3, size=(50, 256))).astype(np.float32)
    batch = window_scores(x, y, spec)
    np.testing.assert_array_equal([scorer(a, b) for a, b in zip(x, y, strict=True)], batch)


def test_channel_max_is_the_worst_channels_mean_error_in_its_own_units() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(20, 32, 8))
    y = x + rng.normal(scale=0.1, size=(20, 32, 8))
    y[:, :, 3] += 0.5  # one channel off by 0.5 for the whole window: its error is 0.25 + ~0.01
    spec = ScoreSpec(channel_scale=SCALES)
    expected = (((x - y) ** 2).mean(axis=1) / np.asarray(SCALES)).max(axis=1)
    np.testing.assert_allclose(window_scores(x, y, spec), expected, rtol=1e-12)
    assert np.all(np.argmax(((x - y) ** 2).mean(axis=1) / SCALES, axis=1) == 3)
    # the mean over all values dilutes the same channel eightfold
    mean_scores = window_scores(x, y, ScoreSpec())
    assert np.all(window_scores(x, y, spec) > 5 * mean_scores)


def test_a_channel_scale_that_does_not_divide_the_window_is_refused() -> None:
    spec = ScoreSpec(channel_scale=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="windows of 256 values do not hold 3 channels"):
        WindowScorer(256, spec)
    with pytest.raises(ValueError, match="do not hold 3 channels"):
        window_scores(np.zeros((2, 256)), np.zeros((2, 256)), spec)


def test_responsible_channels_rank_in_units_of_the_channel_scale() -> None:
    x = np.zeros((32, 3))
    y = np.zeros((32, 3))
    y[:, 0] = 1.0  # error 1.0 on a channel that normally errs by 10
    y[:, 2] = 0.5  # error 0.25 on a channel that normally errs by 0.01
    names = ["a", "b", "c"]
    assert responsible_channels(x, y, names, top=1) == ["a"]
    assert responsible_channels(x, y, names, top=1, channel_scale=[10.0, 1.0, 0.01]) == ["c"]
