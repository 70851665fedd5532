"""Windows for training: segment boundaries, time order, labels (no TensorFlow needed)."""

from __future__ import annotations

import numpy as np

from cloud_hub.training.artifact import TrainingSpec
from cloud_hub.training.dataset import prepare_dataset


def test_windows_never_cross_segment_boundaries() -> None:
    # Each segment holds one constant value, so a window mixing two segments has two values.
    lengths = [120, 90, 150]
    readings = np.concatenate([np.full((n, 2), float(i)) for i, n in enumerate(lengths)])
    readings += np.linspace(0, 1e-3, len(readings))[:, None]  # keep std > 0 without mixing
    data = prepare_dataset(readings, ["a", "b"], TrainingSpec(window=10), segments=lengths)
    for windows in (data.train, data.validation):
        spread = windows[:, :, 0].max(axis=1) - windows[:, :, 0].min(axis=1)
        assert spread.max() < 0.01  # never spans two segments (≥ 1 apart after scaling)
    assert data.validation_lengths == [15, 9, 21]  # tail 20% of each segment, windows of 10


def test_validation_lies_after_training_in_each_segment() -> None:
    lengths = [200, 200]
    ramp = np.concatenate([np.arange(n, dtype=float) for n in lengths])
    readings = np.stack([ramp, -ramp], axis=1)
    data = prepare_dataset(readings, ["up", "down"], TrainingSpec(window=8), segments=lengths)
    assert data.validation[:, :, 0].min() > data.train[:, :, 0].max()


def test_labelled_windows_are_kept_out_of_training_and_marked_for_validation() -> None:
    readings = np.random.default_rng(0).normal(size=(500, 3))
    labels = np.zeros(500, dtype=int)
    labels[100:110] = 1  # in the training part
    labels[450:460] = 1  # in the validation part
    spec = TrainingSpec(window=5)
    data = prepare_dataset(readings, ["a", "b", "c"], spec, labels=labels)
    assert len(data.train) == (400 - 5 + 1) - (10 + 5 - 1)
    assert data.validation_labels is not None
    assert int(data.validation_labels.sum()) == 10 + 5 - 1
    assert data.training_rows == 390


def test_training_windows_are_subsampled_beyond_the_cap() -> None:
    readings = np.random.default_rng(0).normal(size=(2000, 2))
    data = prepare_dataset(readings, ["a", "b"], TrainingSpec(window=4, max_train_windows=100))
    assert len(data.train) == 100
    assert data.total_train_windows == 1600 - 4 + 1
