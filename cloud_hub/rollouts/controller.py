"""Placeholder replaced below."""
from __future__ import annotations

import threading

from sqlalchemy.engine import Engine

from cloud_hub.mqtt.publisher import Publisher


class RolloutController:
    def __init__(self, engine: Engine, publisher: Publisher, *, tick_s: float = 0.5) -> None:
        self._engine, self._publisher, self._tick = engine, publisher, tick_s
        self._stop = threading.Event()

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
