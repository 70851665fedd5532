"""Report plots (matplotlib, Agg): signals with true fault intervals, scores, latencies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from simulator.replay import ScoreTrace
from simulator.scoring import Event, GroundTruth

__all__ = ["DeviceTrace", "plot_device", "plot_latencies"]


class DeviceTrace:
    """What one device's plot shows: its stored readings, score trace, faults and events."""

    def __init__(
        self,
        device_id: str,
        channels: Sequence[str],
        ts: npt.NDArray[np.float64],
        values: npt.NDArray[np.float64],
        trace: ScoreTrace | None,
        faults: Sequence[GroundTruth],
        events: Sequence[Event],
    ) -> None:
        self.device_id = device_id
        self.channels = list(channels)
        self.ts = ts
        self.values = values
        self.trace = trace
        self.faults = list(faults)
        self.events = list(events)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_device(d: DeviceTrace, path: Path, origin: float, max_channels: int = 4) -> Path:
    """Top: a few channels (z-scored) with fault intervals shaded; bottom: score vs threshold."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    t = d.ts - origin
    faulty = {c for f in d.faults for c in f.channels}
    shown = [c for c in d.channels if c in faulty] or d.channels[:1]
    shown += [c for c in d.channels if c not in shown][: max(0, max_channels - len(shown))]
    for c in shown:
        col = d.values[:, d.channels.index(c)]
        std = col.std() or 1.0
        ax1.plot(t, (col - col.mean()) / std, lw=0.8, label=c)
    for ax in (ax1, ax2):
        for f in d.faults:
            ax.axvspan(f.start - origin, f.end - origin, color="tab:red", alpha=0.15)
    for f in d.faults:
        ax1.text(f.start - origin, ax1.get_ylim()[1] * 0.9, f.kind, fontsize=8, color="tab:red")
    ax1.set_ylabel("reading (z-score)")
    ax1.legend(loc="upper right", fontsize=7, ncol=len(shown))
    ax1.set_title(f"{d.device_id}: signals, true fault intervals (red), anomaly events (ticks)")
    if d.trace is not None and len(d.trace.ts):
        ax2.plot(d.trace.ts - origin, d.trace.scores, lw=0.8, color="tab:blue", label="score")
        ax2.axhline(d.trace.threshold, color="black", ls="--", lw=0.8, label="threshold")
        ax2.set_yscale("log")
    for e in d.events:
        ax2.axvline(e.ts_end - origin, color="tab:orange", lw=0.6, alpha=0.7)
    ax2.set_ylabel("anomaly score (TFLite replay)")
    ax2.set_xlabel("seconds since fault injection began")
    ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latencies(latencies_ms: Sequence[float], path: Path) -> Path:
    """Histogram of detection latency (fault start to the hub's commit of the first event)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if latencies_ms:
        ax.hist(np.asarray(latencies_ms) / 1000.0, bins=min(30, max(5, len(latencies_ms))),
                color="tab:blue", edgecolor="white")
        p50 = float(np.percentile(latencies_ms, 50)) / 1000.0
        ax.axvline(p50, color="black", ls="--", lw=0.8, label=f"p50 {p50:.2f} s")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no fault was detected", ha="center", transform=ax.transAxes)
    ax.set_xlabel("detection latency (s): fault start to hub commit of the first event")
    ax.set_ylabel("faults")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
