"""Verified model bytes → a :class:`LoadedModel` in a fresh interpreter, fitted to the source."""

from __future__ import annotations

from edge_agent.detect.records import LoadedModel
from edge_agent.inference.runtime import ModelLoadError, TfliteModel
from shared.manifest import Manifest

__all__ = ["load_model"]


def load_model(
    manifest: Manifest, data: bytes, *, channels: list[str], num_threads: int = 1
) -> LoadedModel:
    """Raise ModelLoadError with the reason if the model cannot run on this device's readings."""
    wanted = manifest.input.channels
    missing = [c for c in wanted if c not in channels]
    if missing:
        raise ModelLoadError(
            f"model {manifest.name} v{manifest.version} needs channel(s) {missing} that the "
            f"source does not provide (source channels: {channels})"
        )
    runtime = TfliteModel(data, num_threads=num_threads)
    runtime.check_input(manifest.input.window, len(wanted))
    return LoadedModel(
        manifest=manifest,
        runtime=runtime,
        threshold=manifest.threshold,
        channel_index=[channels.index(c) for c in wanted],
    )
