"""The incident job: groups newly committed anomaly events, resolves quiet incidents, and
queues their notifications, all in one transaction per tick.

It reads the anomalies table (events not yet grouped have ``incident_id`` NULL), never the MQTT
stream, so it works the same whichever hub process stored the events; the hub's on-commit hook
only wakes it sooner. It runs under a lease, in one hub process at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.engine import Engine

from cloud_hub.db.leases import Lease, session_under
from cloud_hub.incidents.grouping import GroupingPolicy, group_pending, resolve_quiet
from cloud_hub.notify.rules import queue_notifications

__all__ = ["IncidentTick"]

log = logging.getLogger(__name__)


class IncidentTick:
    """The tick function of the ``incidents`` leased worker."""

    def __init__(self, engine: Engine, policy: GroupingPolicy,
                 on_change: Callable[[int], None] | None = None) -> None:
        self._engine = engine
        self.policy = policy
        self._on_change = on_change  # told how many deliveries were queued
        self.events_grouped = 0
        self.incidents_opened = 0

    def __call__(self, now: float, lease: Lease | None = None) -> bool:
        """One tick; its transaction commits under ``lease`` (see :mod:`cloud_hub.db.leases`):
        a tick that lost it opens no incident another process opened for the same events."""
        with session_under(lease, self._engine) as session:
            grouped = group_pending(session, self.policy, now)
            resolved = resolve_quiet(session, self.policy, now)
            changed = {i.id: i for i in [*grouped.opened, *grouped.updated, *resolved]}
            queued = queue_notifications(session, changed.values(), now)
            session.commit()
        self.events_grouped += grouped.events
        self.incidents_opened += len(grouped.opened)
        if grouped.opened or resolved:
            log.info("incidents: %d event(s) grouped, %d opened, %d resolved as quiet, "
                     "%d notification(s) queued", grouped.events, len(grouped.opened),
                     len(resolved), queued)
        if self._on_change is not None and (changed or queued):
            self._on_change(queued)
        return grouped.events == self.policy.batch
