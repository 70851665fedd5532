"""A device id used by two sources (issue 11 defect 5), seen from what ingest stores.

One device has one outbox, so one stream epoch at a time: when its state is wiped it starts a
new epoch and the old one never sends again. Two sources under one device id show in two ways:

- ``epochs``: an epoch of the device sends new messages (a seq above its own top) after another
  epoch began (first heard in the same batch or later): two agents with the same
  ``device_id``, each with its own state. A device whose state was wiped never does this: its
  old epoch is gone, and the broker hands the hub its messages in the order they were sent;
- ``seq``: one (epoch, seq) arrives twice with different readings: two devices running copies
  of one state directory (a cloned image), whose seqs collide; without this check the second
  copy would pass for a harmless duplicate and its readings would be lost unseen.

Found in the ingest transaction (from the stream marks read before they advance, and from the
stored rows of the duplicates only), recorded on :class:`~cloud_hub.db.tables.DeviceConflict`
(first and last time, a count, the latest case in words), and shown with the device by the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, tuple_
from sqlalchemy import select as core_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from cloud_hub.core.states import ConflictKind
from cloud_hub.db import pg_bulk
from cloud_hub.db.marks import MarkKey
from cloud_hub.db.tables import DeviceConflict, StreamMark, TelemetryKey
from shared.packed import Telemetry, timestamps

__all__ = ["Conflict", "MarksBefore", "conflicts_of", "epoch_conflicts", "read_marks",
           "record_conflicts", "seq_conflicts"]

_CHUNK = 400


@dataclass(frozen=True)
class Conflict:
    device_id: str
    kind: ConflictKind
    detail: str
    epochs: tuple[str, ...]


@dataclass
class MarksBefore:
    """The stream marks of a batch's devices as the ingest transaction found them, before it
    stored anything: per device and epoch when it was first heard, and per (device, epoch,
    stream) its top and watermark."""

    first_seen: dict[str, dict[str, float]] = field(default_factory=dict)
    tops: dict[tuple[str, str, str], int] = field(default_factory=dict)
    watermarks: dict[tuple[str, str, str], int] = field(default_factory=dict)


def read_marks(session: Session, device_ids: Iterable[str]) -> MarksBefore:
    """Every stream mark of ``device_ids`` (in the ingest transaction, before the marks
    advance)."""
    devices = sorted(set(device_ids))
    before = MarksBefore()
    marks: Table = StreamMark.__table__  # type: ignore[attr-defined]
    m = marks.c
    dialect = session.get_bind().dialect.name
    chunk = len(devices) or 1 if dialect == "postgresql" else _CHUNK
    for i in range(0, len(devices), chunk):
        part = devices[i:i + chunk]
        for device_id, epoch, stream, seen, top, watermark in session.execute(
                core_select(m.device_id, m.epoch, m.stream, m.first_seen, m.top, m.watermark)
                .where(pg_bulk.in_list(m.device_id, part, dialect))):
            epochs = before.first_seen.setdefault(device_id, {})
            epochs[epoch] = min(epochs.get(epoch, seen), seen)
            before.tops[(device_id, epoch, stream)] = top
            before.watermarks[(device_id, epoch, stream)] = watermark
    return before


def epoch_conflicts(before: MarksBefore, touched: dict[MarkKey, tuple[int, int]]
                    ) -> list[Conflict]:
    """Streams of this batch whose epoch sent something new although a newer epoch of the same
    device exists, from the marks as they were before the batch."""
    first_seen, tops = before.first_seen, before.tops
    found: dict[str, Conflict] = {}
    for key, (_floor, top) in sorted(touched.items()):
        device, epoch = key.device_id, key.epoch
        epochs = first_seen.get(device, {})
        mine = epochs.get(epoch)
        if mine is None or len(epochs) < 2 or top <= tops.get((device, epoch,
                                                                key.stream.value), -1):
            continue  # a new epoch, the only one, or nothing beyond what it sent before
        # first heard with or after this one (two epochs can first arrive in one batch)
        newer = sorted(e for e, seen in epochs.items() if e != epoch and seen >= mine)
        if newer:
            found[device] = Conflict(
                device, ConflictKind.EPOCHS,
                f"epoch {epoch} sent {key.stream.value} seq {top} after epoch {newer[-1]} "
                f"began: two agents use device id {device!r}, each with its own state",
                (epoch, *newer))
    return list(found.values())


def _fingerprint(t: Telemetry) -> tuple[int, float, float]:
    ts = timestamps(t)
    return (t.readings, min(ts), max(ts))


def seq_conflicts(session: Session, telemetry: Sequence[Telemetry],
                  stored: set[tuple[str, str, int]]) -> list[Conflict]:
    """Telemetry keys that arrived again (in this batch or before) with different readings."""
    firsts: dict[tuple[str, str, int], Telemetry] = {}
    again: list[Telemetry] = []
    for t in telemetry:
        key = (t.device_id, t.epoch, t.seq)
        if key in stored and key not in firsts:
            firsts[key] = t
        else:
            again.append(t)
    if not again:
        return []  # the usual case: no fingerprint is needed
    keys = {(t.device_id, t.epoch, t.seq) for t in again}
    first = {k: _fingerprint(firsts[k]) for k in keys if k in firsts}
    unknown = sorted(keys - set(first))
    table: Table = TelemetryKey.__table__  # type: ignore[attr-defined]
    for i in range(0, len(unknown), _CHUNK):
        part = unknown[i:i + _CHUNK]
        rows = session.execute(
            core_select(table.c.device_id, table.c.epoch, table.c.seq, table.c.readings,
                        table.c.ts_first, table.c.ts_last)
            .where(tuple_(table.c.device_id, table.c.epoch, table.c.seq).in_(part)))
        for d, e, s, readings, ts_first, ts_last in rows:
            first[(d, e, int(s))] = (int(readings), float(ts_first), float(ts_last))
    found: dict[str, Conflict] = {}
    for t in again:
        key = (t.device_id, t.epoch, t.seq)
        if key in first and first[key] != _fingerprint(t):
            found[t.device_id] = Conflict(
                t.device_id, ConflictKind.SEQ,
                f"epoch {t.epoch} seq {t.seq} arrived twice with different readings: two "
                f"devices run copies of one state as device id {t.device_id!r}", (t.epoch,))
    return list(found.values())


def record_conflicts(session: Session, conflicts: Iterable[Conflict], *, now: float) -> None:
    """Upsert each device's conflict record (in the session's transaction)."""
    rows = [{"device_id": c.device_id, "kind": c.kind, "detail": c.detail[:2000],
             "epochs": list(c.epochs), "first_at": now, "last_at": now, "count": 1}
            for c in conflicts]
    if not rows:
        return
    table: Table = DeviceConflict.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    new = insert.excluded
    stmt = insert.on_conflict_do_update(
        index_elements=["device_id"],
        set_={"kind": new.kind, "detail": new.detail, "epochs": new.epochs,
              "last_at": new.last_at, "count": table.c.count + 1},
    )
    for row in sorted(rows, key=lambda r: str(r["device_id"])):
        session.execute(stmt, row)


def conflicts_of(session: Session, device_ids: Sequence[str]) -> dict[str, DeviceConflict]:
    """The conflict records of these devices (those that have one)."""
    found: dict[str, DeviceConflict] = {}
    for i in range(0, len(device_ids), _CHUNK):
        part = list(device_ids[i:i + _CHUNK])
        for row in session.exec(select(DeviceConflict).where(
                col(DeviceConflict.device_id).in_(part))):
            found[row.device_id] = row
    return found
