"""Which hubs a device hears under its topic prefix, so that an operator can be told when none.

Each hub process keeps a retained :class:`~shared.messages.HubStatus` (online while it runs,
refreshed; offline as its will). An agent with a wrong ``mqtt.topic_prefix`` connects, sends and
drains its outbox into a broker where nothing listens: it hears no hub at all. After
``silence_warn_s`` connected without any online hub record, :class:`HubWatch` says so (a log
warning once, and ``edge-agent status``). Delivery does not depend on it: messages stay in the
outbox until a hub acknowledges them (:mod:`.delivery`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from shared.messages import DeviceStatus, HubStatus, MessageError, decode
from shared.packed import ENCODINGS_PROPERTY

__all__ = ["HubWatch"]

log = logging.getLogger(__name__)


class HubWatch:
    """Call from the thread that handles inbound messages (not thread-safe on its own)."""

    def __init__(self, *, prefix: str, silence_warn_s: float = 60.0, name: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self.silence_warn_s = silence_warn_s
        self.name = name
        self._clock = clock
        self.online: dict[str, float] = {}  # hub id -> when its online record was last seen
        self.encodings: dict[str, frozenset[str]] = {}  # hub id -> telemetry encodings it reads
        self._connected_since: float | None = None
        self._warned = False

    def on_payload(self, hub_id: str, payload: bytes,
                   properties: Sequence[tuple[str, str]] = ()) -> None:
        """What arrived on hub ``hub_id``'s presence topic (``properties``: the record's MQTT 5
        user properties); raises MessageError when bad."""
        if not payload:
            self._forget(hub_id)
            return
        status = decode(HubStatus, payload)
        if status.device_id != hub_id:
            raise MessageError(f"HubStatus: device_id {status.device_id!r} does not match the "
                               f"topic's {hub_id!r}")
        if status.state == DeviceStatus.ONLINE:
            self.online[hub_id] = self._clock()
            self.encodings[hub_id] = frozenset(
                " ".join(v for k, v in properties if k == ENCODINGS_PROPERTY).split())
            if self._warned:
                log.info("%s: hub %s is online under %r", self.name, hub_id, self.prefix)
                self._warned = False
        else:
            self._forget(hub_id)

    def _forget(self, hub_id: str) -> None:
        self.online.pop(hub_id, None)
        self.encodings.pop(hub_id, None)

    def reads(self, encoding: str) -> bool:
        """Every hub heard online announced that it reads telemetry in ``encoding`` (False
        while none is heard: JSON is what a hub of any build reads)."""
        return bool(self.online) and all(encoding in self.encodings.get(h, ())
                                         for h in self.online)

    def link(self, connected: bool) -> None:
        if connected and self._connected_since is None:
            self._connected_since = self._clock()
        elif not connected:
            self._connected_since = None

    def silent_for(self) -> float | None:
        """Seconds connected without hearing any hub online, once past the warning threshold."""
        if self.online or self._connected_since is None:
            return None
        quiet = self._clock() - self._connected_since
        return quiet if quiet >= self.silence_warn_s else None

    def check(self) -> None:
        quiet = self.silent_for()
        if quiet is not None and not self._warned:
            self._warned = True
            log.warning("%s: connected for %.0f s and no hub has announced itself under topic "
                        "prefix %r: check mqtt.topic_prefix (messages stay in the outbox until "
                        "a hub acknowledges them)", self.name, quiet, self.prefix)

    def status(self) -> dict[str, Any]:
        quiet = self.silent_for()
        return {"hubs_online": sorted(self.online), "prefix": self.prefix,
                "warning": None if quiet is None else
                f"no hub heard under prefix {self.prefix!r} for {quiet:.0f} s"}
