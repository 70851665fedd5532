"""What the hub received and has not stored yet: bounded, so the hub's memory is too.

QoS 1 messages are bounded at the source: the hub's connection asks the broker (MQTT 5
Receive Maximum) to have at most ``receive_maximum`` of them unacknowledged at a time, so the
rest wait in the hub's session on the broker (``max_queued_messages`` / ``max_queued_bytes``
in mosquitto.conf) or in the devices' outboxes. Should a broker send more, or bigger ones than
the byte bound, the network thread waits here until the worker has taken some (TCP then holds
the broker back). QoS 0 messages (heartbeats) have no such bound: over the limits they are
dropped and counted, as QoS 0 allows.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

__all__ = ["Inbox"]


class Inbox:
    def __init__(self, *, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: deque[Any] = deque()
        self._bytes = 0
        self._cond = threading.Condition(threading.Lock())
        self.dropped_qos0 = 0
        self.waits = 0  # times the network thread waited for room
        self.high_water = 0  # most messages held at once
        self._wanted = 1  # how many the worker waits for (it is woken only then)
        self._wanted_bytes = max_bytes  # or how many payload bytes
        self._urgent = False  # something held must not wait for the batch to fill
        self.last_take_full = False  # the last take reached a bound (more was waiting)

    def _full(self) -> bool:
        return len(self._items) >= self.max_messages or self._bytes >= self.max_bytes

    def put(self, message: Any, *, stop: threading.Event | None = None,
            urgent: bool = False) -> bool:
        """Hold ``message`` (anything with ``payload`` and ``qos``); False if a QoS 0 message
        was dropped for want of room. ``urgent``: the batch it joins is handed over at once
        instead of waiting to fill (an anomaly does not wait behind the telemetry batching)."""
        size = len(message.payload)
        with self._cond:
            if self._full():
                if message.qos == 0:
                    self.dropped_qos0 += 1
                    return False
                self.waits += 1
                while self._full() and self._items and not (stop and stop.is_set()):
                    self._cond.wait(0.5)
            self._items.append(message)
            self._bytes += size
            held = len(self._items)
            if held > self.high_water:
                self.high_water = held
            if urgent:
                self._urgent = True
            if held >= self._wanted or self._bytes >= self._wanted_bytes or urgent:
                self._cond.notify_all()
        return True

    def take(self, max_messages: int, *, wait_s: float, first_timeout: float,
             max_bytes: int | None = None) -> list[Any]:
        """Up to ``max_messages``, and no more payload bytes than ``max_bytes`` once it holds
        one message (a message bigger than that comes alone): waits ``first_timeout`` for the
        first, then at most ``wait_s`` more for the batch to fill. ``last_take_full`` then says
        whether either bound was reached."""
        cap = max_bytes if max_bytes is not None else self.max_bytes
        with self._cond:
            if not self._items:
                self._wanted = 1
                self._cond.wait(first_timeout)
                if not self._items:
                    self.last_take_full = False
                    return []
            deadline = time.monotonic() + wait_s
            self._wanted, self._wanted_bytes = max_messages, cap
            while (len(self._items) < max_messages and self._bytes < cap
                   and not self._urgent):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._wanted, self._wanted_bytes = 1, self.max_bytes
            self._urgent = False
            items, size = self._items, 0
            taken: list[Any] = []
            while items and len(taken) < max_messages:
                n = len(items[0].payload)
                if taken and size + n > cap:
                    break
                taken.append(items.popleft())
                size += n
            self._bytes -= size
            self.last_take_full = len(taken) >= max_messages or bool(items) or size >= cap
            self._cond.notify_all()
            return taken

    def qsize(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes
