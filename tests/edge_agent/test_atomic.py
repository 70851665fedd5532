"""Atomic state-file writes: readers see the old content or the new one, never half of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge_agent.models.atomic import write_atomic


@pytest.mark.parametrize("durable", [True, False])
def test_write_atomic_replaces_the_file_whole(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "state" / "status.json"
    write_atomic(path, json.dumps({"n": 1}).encode(), durable=durable)
    write_atomic(path, json.dumps({"n": 2, "pad": "x" * 10_000}).encode(), durable=durable)
    assert json.loads(path.read_bytes())["n"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["status.json"]


def test_a_report_file_is_written_without_fsync(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    write_atomic(tmp_path / "status.json", b"{}", durable=False)
    assert synced == []
    write_atomic(tmp_path / "manifest.json", b"{}")
    assert len(synced) == 2  # the file, then its directory
