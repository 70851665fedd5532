"""The agent's Page-Hinkley detector decides exactly as river's on the same streams.

river itself stays out of the agent (it costs ~93 MB of RSS in the agent process, above the
agent's whole bar): it is a dev dependency, used here as the reference. The minimal edge venv
has no river; there this comparison is skipped, the rest of the drift tests run.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from edge_agent.drift.page_hinkley import PageHinkley

river_drift = pytest.importorskip("river.drift", reason="river is a dev dependency only")


def _streams() -> dict[str, list[float]]:
    rng = random.Random(12345)
    gen = np.random.default_rng(7)
    return {
        "river's example": [float(x) for x in rng.choices([0, 1], k=1000)
                            + rng.choices(range(4, 8), k=1000)],
        "gaussian step up": list(np.concatenate([gen.normal(0, 1, 600),
                                                 gen.normal(1.5, 1, 600)])),
        "gaussian step down": list(np.concatenate([gen.normal(0, 1, 500),
                                                   gen.normal(-2.0, 1, 500)])),
        "slow ramp": list(gen.normal(0, 1, 1500) + np.linspace(0, 3, 1500)),
        "stationary": list(gen.normal(0, 1, 3000)),
        "several changes": list(np.concatenate([gen.normal(m, 0.5, 300)
                                                for m in (0, 2, 0, -2, 3, 0)])),
    }


SETTINGS = [
    {},
    {"threshold": 10.0, "delta": 0.2, "min_instances": 5, "mode": "up"},
    {"threshold": 10.0, "delta": 0.2, "min_instances": 5, "mode": "down"},
    {"threshold": 25.0, "delta": 0.5, "min_instances": 5, "alpha": 1.0},
    {"threshold": 5.0, "delta": 0.05, "alpha": 0.99},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: repr(s) if s else "defaults")
def test_page_hinkley_detects_where_river_detects(settings: dict[str, object]) -> None:
    for name, stream in _streams().items():
        ours = PageHinkley(**settings)  # type: ignore[arg-type]
        theirs = river_drift.PageHinkley(**settings)
        mine, river = [], []
        for i, x in enumerate(stream):
            if ours.update(x):
                mine.append(i)
            theirs.update(x)
            if theirs.drift_detected:
                river.append(i)
        assert mine == river, f"{name}: {mine[:5]} vs river {river[:5]}"
        assert ours.detections == len(river)


def test_the_comparison_streams_contain_changes_both_detect() -> None:
    found = 0
    for stream in _streams().values():
        theirs = river_drift.PageHinkley(threshold=10.0, delta=0.2, min_instances=5)
        for x in stream:
            theirs.update(x)
            found += int(theirs.drift_detected)
    assert found >= 5  # the comparison is not only about streams where nothing happens


def test_page_hinkley_refuses_a_bad_mode_or_threshold() -> None:
    with pytest.raises(ValueError, match="mode"):
        PageHinkley(mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        PageHinkley(threshold=0.0)
