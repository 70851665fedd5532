"""When to send again what the broker already acknowledged: the hubs' presence, seen by a device.

Each hub process publishes a retained :class:`~shared.messages.HubStatus` with a session id that
is new on every connection (and the same record, offline, as its last will). A PUBACK may have
reached nobody while a hub was away and its broker session was lost, so a device becomes
*suspect* when its own link drops (from a margin before that moment) or when it sees a hub go
offline; the next hub session it has not seen before makes it resend everything acknowledged
since then (:meth:`~edge_agent.telemetry.outbox.Outbox.resend_acked_since`). The last session
seen per hub is kept in the outbox database, so a restarted device does not resend needlessly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_agent.telemetry.outbox import Outbox
from shared.messages import DeviceStatus, HubStatus, MessageError, decode
from shared.timefmt import iso_time

__all__ = ["HubPresence"]

log = logging.getLogger(__name__)
_META_PREFIX = "hub_session:"


class HubPresence:
    """Tracks hub sessions for one outbox; call it from the thread that handles inbound
    messages (it is not thread-safe on its own, the outbox is)."""

    def __init__(
        self, outbox: Outbox, *, margin_s: float, name: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.margin_s = margin_s
        self.name = name
        self._clock = clock
        # Wall-clock time (the outbox's ``acked_at`` clock) from which acknowledged messages
        # may have been lost; None: nothing is suspect (the state after a start).
        self.suspect_since: float | None = None
        self.resends = 0  # how often a new hub session made this device send again

    def link_lost(self, at: float) -> None:
        """This device's own connection dropped at ``at`` (wall clock)."""
        self._suspect(at)

    def on_payload(self, hub_id: str, payload: bytes) -> int | None:
        """What arrived on hub ``hub_id``'s presence topic (empty: its retained record was
        cleared); as :meth:`on_status`. Raises :class:`MessageError` for a bad payload."""
        if not payload:
            return None
        status = decode(HubStatus, payload)
        if status.device_id != hub_id:
            raise MessageError(f"HubStatus: device_id {status.device_id!r} does not match the "
                               f"topic's {hub_id!r}")
        return self.on_status(status)

    def on_status(self, status: HubStatus) -> int | None:
        """A hub's presence record arrived; how many messages were handed out again, or None
        when it did not call for a resend."""
        if status.state == DeviceStatus.OFFLINE:
            self._suspect(self._clock())
            return None
        key = _META_PREFIX + status.device_id
        if self.outbox.meta(key) == status.session:
            return None  # a session already seen, e.g. the retained record after a reconnect
        count: int | None = None
        if self.suspect_since is not None:
            since, self.suspect_since = self.suspect_since, None
            count = self.outbox.resend_acked_since(since)
            self.resends += 1
            log.log(logging.INFO if count else logging.DEBUG,
                    "%s: hub %s is back with a new session; sending again the %d message(s) "
                    "acknowledged since %s", self.name, status.device_id, count, iso_time(since))
        self.outbox.set_meta(key, status.session)
        return count

    def _suspect(self, at: float) -> None:
        if self.suspect_since is None:
            self.suspect_since = at - self.margin_s
