"""Shard threads for fleet-scale mode: one thread drives many devices' sockets and work.

Each shard watches its devices' MQTT sockets with one ``epoll`` selector (paho is driven from
outside: ``loop_read`` / ``loop_write`` / ``loop_misc``) and calls every device's ``tick`` at a
fixed interval, and a device's ``tick`` at once when its socket delivered something. Used by
:mod:`simulator.scale_fleet`.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import Any, Protocol

__all__ = ["Driven", "Shard"]

log = logging.getLogger(__name__)


class Driven(Protocol):
    """What a shard needs from a device."""

    device_id: str
    client: Any  # a paho client driven from outside its own loop

    def tick(self, now: float) -> None: ...


class Shard:
    """One thread driving many devices: epoll for their sockets, a tick for their work."""

    def __init__(self, name: str, tick_s: float) -> None:
        self.name = name
        self.tick_s = tick_s
        self.devices: list[Driven] = []
        self.selector = selectors.DefaultSelector()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ticks = 0
        self.max_lag_s = 0.0

    def watch(self, device: Driven, sock: socket.socket) -> None:
        try:
            self.selector.register(sock, selectors.EVENT_READ, device)
        except KeyError:
            self.selector.modify(sock, selectors.EVENT_READ, device)

    def unwatch(self, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def want_write(self, device: Driven, sock: socket.socket, on: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            self.selector.modify(sock, events, device)
        except (KeyError, ValueError):
            pass

    def _run(self) -> None:
        next_tick = time.monotonic()
        next_misc = next_tick + 1.0
        while not self.stop_event.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                ready = self.selector.select(timeout) if self.selector.get_map() else []
            except OSError as exc:
                log.warning("shard %s: select failed: %s", self.name, exc)
                ready = []
            if not ready and timeout > 0 and not self.selector.get_map():
                self.stop_event.wait(timeout)
            heard: list[Driven] = []
            for key, mask in ready:
                device: Driven = key.data
                if mask & selectors.EVENT_READ:
                    heard.append(device)
                    device.client.loop_read()
                    # TLS: decrypted bytes can wait in the socket where epoll cannot see them
                    sock: Any = key.fileobj
                    while getattr(sock, "pending", None) is not None and sock.pending() > 0:
                        device.client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    device.client.loop_write()
            now = time.monotonic()
            due = now >= next_tick
            if due:
                self.max_lag_s = max(self.max_lag_s, now - next_tick)
                self.ticks += 1
                next_tick = max(next_tick + self.tick_s, now)
            # Every device on the tick; between ticks, those that received something at once
            # (a message handled now is not a hop that waits for the next tick).
            for device in self.devices if due else heard:
                try:
                    device.tick(now)
                except Exception:  # one device's failure must not stop the others
                    log.exception("device %s: tick failed", device.device_id)
            if now >= next_misc:
                for device in self.devices:
                    device.client.loop_misc()
                next_misc = now + 1.0
