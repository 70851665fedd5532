"""Plots of an evaluation (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from simulator.evaluate.nab import NabFileResult, NabResult
    from simulator.evaluate.skab import SkabFileResult, SkabResult

__all__ = ["plot_nab", "plot_skab"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shade(ax: Any, mask: npt.NDArray[np.bool_], x: npt.NDArray[Any], color: str) -> None:
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        ax.axvspan(x[start], x[end - 1], color=color, alpha=0.2, lw=0)


def _skab_file(plt: Any, r: SkabFileResult, path: Path, train_rows: int) -> None:
    fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
    x = np.arange(len(r.values))
    scale = np.maximum(r.values[:train_rows].std(axis=0), 1e-9)
    z = (r.values - r.values[:train_rows].mean(axis=0)) / scale
    for i, name in enumerate(r.channels):
        axes[0].plot(x, z[:, i], lw=0.6, label=name)
    axes[0].set_ylabel("readings (z)")
    axes[0].legend(fontsize=6, ncol=4, loc="upper left")
    axes[1].plot(x, r.device_replay.scores, lw=0.8, label="score (int8 TFLite, agent detector)")
    axes[1].plot(x, r.reference_replay.scores, lw=0.8, ls="--", label="score (float32 TFLite)")
    axes[1].plot(x, r.device_replay.thresholds, color="red", lw=0.8, label="threshold")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7, loc="upper left")
    axes[2].step(x, r.labels, where="post", label="labelled anomaly")
    axes[2].step(x, r.flags * 0.9, where="post", label="flagged (device)")
    axes[2].set_ylim(-0.1, 1.2)
    axes[2].legend(fontsize=7, loc="upper left")
    for ax in axes:
        _shade(ax, r.labels.astype(bool), x, "orange")
        ax.axvline(train_rows, color="grey", lw=0.8, ls=":")
    s = r.summary()
    fig.suptitle(f"SKAB {r.name}: F1 {s['f1']:.3f}  FAR {s['far']:.1f}%  MAR {s['mar']:.1f}%")
    axes[2].set_xlabel("row (1 Hz); dotted line: end of the 400 training rows")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_skab(result: SkabResult, out: Path, *, files: int, train_rows: int) -> list[Path]:
    """A per-file figure for the first ``files`` files and a per-file metrics summary."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in result.files[:files]:
        path = out / f"{r.name.replace('/', '_')}.png"
        _skab_file(plt, r, path, train_rows)
        written.append(path)
    fig, ax = plt.subplots(figsize=(11, 4))
    names = [r.name for r in result.files]
    pos = np.arange(len(names))
    ax.bar(pos - 0.25, [r.device.f1 * 100 for r in result.files], 0.25, label="F1 × 100")
    ax.bar(pos, [r.device.far for r in result.files], 0.25, label="FAR %")
    ax.bar(pos + 0.25, [r.device.mar for r in result.files], 0.25, label="MAR %")
    ax.set_xticks(pos, names, rotation=60, fontsize=7)
    ax.legend(fontsize=8)
    s = result.summary()
    ax.set_title(
        f"SKAB per file (pooled: F1 {s['f1']:.3f}, FAR {s['far']:.1f}%, MAR {s['mar']:.1f}%)"
    )
    fig.tight_layout()
    path = out / "per_file.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [*written, path]


def _nab_file(plt: Any, r: NabFileResult, path: Path) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
    x = np.arange(r.rows)
    ts = r.series.timestamps
    inside = np.zeros(r.rows, dtype=bool)
    for a, b in r.series.windows:
        inside |= (ts >= a) & (ts <= b)
    axes[0].plot(x, r.series.values, lw=0.6)
    hits = np.flatnonzero(r.detections)
    axes[0].scatter(hits, r.series.values[hits], color="red", s=18, zorder=3, label="detection")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].plot(x, r.device.scores, lw=0.8, label="score (int8 TFLite, agent detector)")
    axes[1].plot(x, r.device.thresholds, color="red", lw=0.8, label="threshold (adaptive)")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7, loc="upper left")
    for ax in axes:
        _shade(ax, inside, x, "orange")
        ax.axvline(r.probation, color="grey", lw=0.8, ls=":")
    s = r.summary()
    fig.suptitle(
        f"NAB {r.name}: {s['true_positives']}/{r.windows} windows hit, "
        f"{s['false_positives']} false positives (dotted: end of the probationary period)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_nab(result: NabResult, out: Path, *, files: int) -> list[Path]:
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in result.files[:files]:
        path = out / f"{Path(r.name).stem}.png"
        _nab_file(plt, r, path)
        written.append(path)
    return written
