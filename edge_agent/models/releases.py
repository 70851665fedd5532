"""The anti-rollback floor: per model name, the highest release this device has installed.

A manifest whose ``release`` is below the floor is refused, so an old signed manifest that
someone replays (a retained record put back on the broker) cannot move the device back. A
rollback the hub decides is a new release with a higher number, so it passes. The floor only
goes up, and is written atomically to ``releases.json`` in the model store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from edge_agent.models.atomic import write_atomic

__all__ = ["ReleaseFloor"]

log = logging.getLogger(__name__)


class ReleaseFloor:
    def __init__(self, path: Path, *, rebuild: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """``rebuild`` yields (name, release) of what is installed, used when the file is lost
        or damaged: the floor is then the highest release still on disk, never nothing."""
        self.path = path
        self._floor: dict[str, int] = {}
        try:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in raw.items()
            ):
                raise ValueError(f"expected {{name: release}}, got {str(raw)[:80]}")
            self._floor = dict(raw)
        except FileNotFoundError:
            self._rebuild(rebuild)
        except ValueError as exc:
            log.error("release floor %s is unreadable (%s); rebuilt from the installed models",
                      path, exc)
            self._rebuild(rebuild)

    def _rebuild(self, installed: Callable[[], Iterable[tuple[str, int]]]) -> None:
        for name, release in installed():
            self._floor[name] = max(release, self._floor.get(name, 0))
        if self._floor:
            try:
                self._save()
            except OSError as exc:  # e.g. a read-only look (`edge-agent status`)
                log.warning("cannot write %s: %s", self.path, exc)

    def get(self, name: str) -> int:
        """The highest release of ``name`` installed here (0: none yet)."""
        return self._floor.get(name, 0)

    def raise_to(self, name: str, release: int) -> None:
        if release > self._floor.get(name, 0):
            self._floor[name] = release
            self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self._floor, sort_keys=True).encode())
