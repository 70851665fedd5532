"""Crash-safe writes of the agent's state files: readers see the old content or the new."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write to a temporary name, fsync, then os.replace: readers see old or new, never half.

    ``durable=False`` skips both fsyncs, for a file that is a report and not data (the agent's
    ``status.json``, rewritten every few seconds): the rename alone keeps readers from seeing
    half a file; after a power cut the file may be old or empty, and the next write fixes it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
