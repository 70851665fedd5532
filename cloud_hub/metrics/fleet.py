"""The fleet as the hub's database knows it, for Prometheus: the devices by presence, those out
of sync with their desired model or with an open incident, and what the devices hold that the
hub has not acknowledged yet (from each device's last heartbeat: its outbox depth and the age
of its oldest unsent message).

An agent keeps every message until the hub's acknowledgement covers it, so that nothing is
lost when the network, the broker or the hub fails; what waits on the devices is the data at
risk, and it shows here before a device's storage fills. Read from the database for a scrape
of the text format (a grouped count and one aggregate over the devices: 22 ms at 10,000
devices on either database), at most once per ``max_age_s`` (5 s) however many scrape the
process (a Prometheus pair does); every hub process on one database gives the same values,
so rules take ``max`` over them. Not in the JSON of ``GET /api/v1/metrics``, which is this
process's own and is read often.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, func, select

from cloud_hub.core.states import DevicePresence
from cloud_hub.db.tables import Device

__all__ = ["FleetFigures", "fleet_figures"]

log = logging.getLogger(__name__)


def fleet_figures(session: Session, now: float) -> dict[str, Any]:
    """``devices`` (by presence), ``out_of_sync``, ``with_open_incidents``,
    ``outbox_messages`` (every device's last heartbeat) and ``oldest_unsent_s`` (online devices'
    last heartbeats; 0 when none is online: nothing held that could be sent)."""
    # the console's own counts (imported here: the console's package imports the hub's)
    from cloud_hub.ui.live import display_state
    from cloud_hub.ui.queries import fleet_counts

    counts = fleet_counts(session, now)
    heartbeat = col(Device.heartbeat)
    depth = heartbeat["outbox_depth"].as_float()
    age = heartbeat["oldest_unsent_age_s"].as_float()
    outbox = session.exec(select(func.coalesce(func.sum(depth), 0.0))).one()
    oldest = session.exec(select(func.max(age)).where(
        display_state(now) == DevicePresence.ONLINE.value)).one()
    return {
        "devices": {p.value: counts.get(p, 0) for p in DevicePresence},
        "out_of_sync": counts["out-of-sync"],
        "with_open_incidents": counts["incident"],
        "outbox_messages": float(outbox),
        "oldest_unsent_s": float(oldest or 0.0),
    }


class FleetFigures:
    """:func:`fleet_figures`, read again when older than ``max_age_s``; None while the database
    does not answer (the scrape leaves the fleet out, and says why in the log)."""

    def __init__(self, engine: Engine, max_age_s: float = 5.0) -> None:
        self._engine = engine
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._read: tuple[float, dict[str, Any]] | None = None

    def get(self) -> dict[str, Any] | None:
        with self._lock:  # concurrent scrapes: one read
            now = time.monotonic()
            if self._read is not None and now - self._read[0] < self.max_age_s:
                return self._read[1]
            try:
                with Session(self._engine) as session:
                    figures = fleet_figures(session, time.time())
            except SQLAlchemyError as exc:
                log.warning("metrics: the fleet's figures are left out of this scrape: %s", exc)
                return None
            self._read = (now, figures)
            return figures
