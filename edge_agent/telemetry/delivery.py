"""What of the outbox is in flight, and what must go out again: end-to-end delivery.

A message is *queued* (never sent, or to be sent again), *sending* (handed to the link, waiting
for its PUBACK: the only in-memory state, ``max_inflight`` entries at most, keyed by message
id) or *delivered* (the broker PUBACKed it at ``delivered_at``, stored with the row). It leaves
the outbox only when a hub :class:`~shared.messages.Ack` for this outbox's epoch covers it: a
PUBACK says that the broker took a message, not that a hub stored it (a broker without a hub
session, or one that lost its state, acknowledges messages that reach nobody).

What goes out again:
- a live acknowledgement (not a retained one replayed at subscribe) whose ``top`` is above a
  delivered message that it does not cover shows that message missing: sent again once it has
  been delivered ``ack_timeout_s`` ago (a hub that is merely behind is not flooded);
- a probe: when a stream's delivered messages stay uncovered for ``ack_timeout_s``, the newest of
  them is sent again, so that a live hub answers even when nothing newer comes; with no answer
  the probe interval doubles up to ``probe_max_s`` (a hub down for an hour costs a few probes,
  not a copy of everything per round), and resets when the stream's watermark moves.
The hub deduplicates on (device, epoch, seq), so a message sent twice is stored once.

A message the hub refuses (it dead-letters what it cannot decode or store) would hold the
watermark back forever, and with it every later message in the outbox, each sent again after
every ``ack_timeout_s``. When the seq right above the watermark has been sent again
``refused_after`` times, each time shown missing by a live acknowledgement while the hub stored
later ones, the outbox drops it (counted, logged with the reason): its floor then passes it, and
the hub's watermark with it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from edge_agent.telemetry import store
from edge_agent.telemetry.store import OutboxEntry, Stream
from shared.messages import Ack, StreamAck

__all__ = ["Delivery"]


@dataclass
class _Probe:
    interval: float
    last_at: float = float("-inf")
    watermark: int = -1


@dataclass
class Delivery:
    db: sqlite3.Connection
    ack_timeout_s: float = 10.0
    probe_max_s: float = 300.0
    sending: dict[int, OutboxEntry] = field(default_factory=dict)  # message id -> entry
    cursor: int = 0  # rows up to here were handed out since the link came up
    resent: int = 0  # messages put back in the queue, since opening
    probes: int = 0
    maybe_queued: bool = True  # False once a take found nothing left: skips the query
    next_probe_check: float = float("-inf")
    refused_after: int = 5
    # (device, stream) -> (the seq holding the watermark back, times sent again for it)
    stuck: dict[tuple[str, Stream], tuple[int, int]] = field(default_factory=dict)
    _probe: dict[Stream, _Probe] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._probe = {s: _Probe(self.ack_timeout_s) for s in Stream}

    def sending_ids(self) -> set[int]:
        return {e.id for e in self.sending.values()}

    def take(self, limit: int) -> list[OutboxEntry]:
        """The next ``limit`` queued messages not already sending, oldest first."""
        if not self.maybe_queued:
            return []
        busy = self.sending_ids()
        found = store.queued_after(self.db, self.cursor, limit + len(busy))
        waiting = [e for e in found if e.id not in busy]
        rows = waiting[:limit]
        if len(found) < limit + len(busy) and len(waiting) <= limit:
            self.maybe_queued = False  # the query saw every queued row, and all are taken
        if rows:
            self.cursor = rows[-1].id
        return rows

    def sent(self, mid: int, entry: OutboxEntry) -> None:
        self.sending[mid] = entry

    def puback(self, mid: int, ok: bool, now: float) -> OutboxEntry | None:
        """The broker answered message ``mid``; its entry (None if it is not ours)."""
        entry = self.sending.pop(mid, None)
        if entry is not None and ok:
            store.mark_delivered(self.db, [entry.id], now)
        elif entry is not None:
            self.maybe_queued = True
        return entry

    def link_changed(self) -> None:
        """Connected or disconnected: what was sending is queued again, in order."""
        self.sending.clear()
        self.cursor = 0
        self.maybe_queued = True

    def _requeue(self, ids: list[int]) -> int:
        if ids:
            self.cursor = min(self.cursor, min(ids) - 1)
            self.resent += len(ids)
            self.maybe_queued = True
        return len(ids)

    def on_ack(self, device_id: str, stream: Stream, mark: StreamAck, *, live: bool,
               now: float) -> int:
        """After the covered rows are gone: queue again what ``mark`` shows missing (live
        acknowledgements only); how many."""
        probe = self._probe[stream]
        if mark.watermark > probe.watermark:
            probe.watermark = mark.watermark
            probe.interval = self.ack_timeout_s
        if not live or mark.top <= mark.watermark:
            return 0
        again = store.undeliver_below(self.db, device_id, stream, mark.top,
                                      now - self.ack_timeout_s)
        # The seq right above the watermark holds every later one back. Sent again each time
        # a live acknowledgement shows it missing while the hub stores later ones: counted.
        blocker = mark.watermark + 1
        if blocker in again.values():
            seq, count = self.stuck.get((device_id, stream), (blocker, 0))
            self.stuck[(device_id, stream)] = (blocker, count + 1 if seq == blocker else 1)
        return self._requeue(list(again))

    def refused(self, device_id: str, stream: Stream) -> int | None:
        """The seq a hub keeps refusing (dead letters) while it stores later ones: sent again
        ``refused_after`` times, a live acknowledgement ``ack_timeout_s`` or more after each
        delivery, never stored. None when there is none."""
        seq, count = self.stuck.get((device_id, stream), (-1, 0))
        if count < self.refused_after:
            return None
        del self.stuck[(device_id, stream)]
        return seq

    def probe_due(self, now: float) -> int:
        """Queue again the newest long-uncovered message of each stream whose probe is due."""
        if now < self.next_probe_check:
            return 0
        # A probe is a fallback for acknowledgements that do not come: looking a quarter of
        # ack_timeout_s late is soon enough, and spares a query per stream every second.
        self.next_probe_check = now + max(1.0, self.ack_timeout_s / 4)
        count = 0
        for stream, probe in self._probe.items():
            if now - probe.last_at < probe.interval:
                continue
            newest = store.newest_delivered(self.db, stream, now - probe.interval)
            if newest is None:
                continue
            probe.last_at = now
            probe.interval = min(probe.interval * 2, self.probe_max_s)
            self.probes += 1
            count += self._requeue(store.undeliver(self.db, "id=?", (newest,)))
        return count


def streams(ack: Ack) -> list[tuple[Stream, StreamAck]]:
    out = [(Stream.TELEMETRY, ack.telemetry), (Stream.ANOMALIES, ack.anomalies)]
    if ack.drift is not None:
        out.append((Stream.DRIFT, ack.drift))
    return out
