"""Reading a device's telemetry back, time-ordered, a bounded page at a time.

Readings are stored in batches (one row per message). A page of ``limit`` readings reads
batches in ``ts_first`` order, a few hundred rows per query (``LIMIT`` in SQL), and stops as
soon as no further batch can hold one of the first ``limit`` readings: a batch whose earliest
reading comes after the ``limit``-th earliest collected so far. So the cost of a page follows
``limit``, not the device's whole history.

Readings are ordered by (ts, ts_first and primary key of their batch, index in the batch), a
unique key; a page's cursor is that key of its last reading, plus the channels of the page, so
that every page has the same columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import tuple_
from sqlmodel import Session, col, select

from cloud_hub.db.paging import CursorError, primary_key_columns
from cloud_hub.db.tables import TelemetryBatchRow

__all__ = ["TelemetryCursor", "TelemetrySlice", "read_telemetry"]

_FIRST_PAGE_ROWS = 256
_MAX_PAGE_ROWS = 4096


@dataclass(frozen=True)
class TelemetryCursor:
    """Where the previous page ended: the order key of its last reading, and its channels."""

    ts: float
    batch: tuple[Any, ...]  # (ts_first, primary key columns other than device_id)
    index: int
    channels: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"ts": self.ts, "batch": list(self.batch), "index": self.index,
                "channels": list(self.channels)}

    @classmethod
    def from_json(cls, data: Any) -> TelemetryCursor:
        """Raises CursorError when ``data`` is not what :meth:`to_json` wrote."""
        try:
            ts, batch, index, channels = (data["ts"], data["batch"], data["index"],
                                          data["channels"])
        except (TypeError, KeyError):
            raise CursorError("a telemetry cursor has ts, batch, index and channels") from None
        width = 1 + len(_batch_key_columns())
        if (not isinstance(ts, int | float) or isinstance(ts, bool)
                or not isinstance(index, int) or isinstance(index, bool) or index < 0
                or not isinstance(batch, list) or len(batch) != width
                or not all(isinstance(v, int | float | str) and not isinstance(v, bool)
                           for v in batch)
                or not isinstance(channels, list)
                or not all(isinstance(c, str) for c in channels)):
            raise CursorError("telemetry cursor values have the wrong types")
        return cls(float(ts), tuple(batch), index, tuple(channels))


@dataclass
class TelemetrySlice:
    """Readings of one device, time-ordered, restricted to ``channels``."""

    device_id: str
    channels: list[str]
    ts: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    batches: int
    next_cursor: TelemetryCursor | None = None  # set when a ``limit`` left readings unread


def _batch_key_columns() -> list[Any]:
    """The batch's primary key without device_id (seq today; whatever the key grows into)."""
    return primary_key_columns(TelemetryBatchRow, skip=("device_id",))


def read_telemetry(
    session: Session, *, device_id: str, since: float | None = None, until: float | None = None,
    limit: int | None = None, channels: list[str] | None = None,
    after: TelemetryCursor | None = None,
) -> TelemetrySlice:
    """Readings in [since, until] after ``after``, at most ``limit`` of them (all if None).

    Batches whose channels lack a requested channel are skipped; without ``channels`` the
    first batch read decides them (or the cursor, which carries them from page to page).
    """
    wanted = list(after.channels) if after is not None and channels is None else channels
    key_columns = [col(TelemetryBatchRow.ts_first), *_batch_key_columns()]
    base = select(TelemetryBatchRow).where(TelemetryBatchRow.device_id == device_id)
    lower = max(since, after.ts) if since is not None and after is not None else (
        after.ts if after is not None else since)
    if lower is not None:
        base = base.where(TelemetryBatchRow.ts_last >= lower)
    if until is not None:
        base = base.where(TelemetryBatchRow.ts_first <= until)
    base = base.order_by(*key_columns)

    ts_parts: list[npt.NDArray[np.float64]] = []
    value_parts: list[npt.NDArray[np.float64]] = []
    rank_parts: list[npt.NDArray[np.int64]] = []
    batch_keys: list[tuple[Any, ...]] = []
    collected = 0
    cutoff: float | None = None  # ts of the limit-th earliest reading collected so far
    stopped_early = False
    last_key: tuple[Any, ...] | None = None
    page_rows = _FIRST_PAGE_ROWS
    while not stopped_early:
        stmt = base if last_key is None else base.where(tuple_(*key_columns) > last_key)
        rows = list(session.exec(stmt.limit(page_rows)))
        for row in rows:
            row_key = (row.ts_first, *(getattr(row, c.key) for c in key_columns[1:]))
            last_key = row_key
            if cutoff is not None and row.ts_first > cutoff:
                stopped_early = True
                break
            if wanted is None:
                wanted = list(row.channels)
            try:
                cols = [row.channels.index(c) for c in wanted]
            except ValueError:
                continue
            ts = np.frombuffer(row.ts_blob, dtype="<f8")
            values = np.frombuffer(row.values_blob, dtype="<f8").reshape(
                len(ts), len(row.channels))
            keep = _in_range(ts, since, until)
            if after is not None:
                keep &= _after(ts, row_key, after)
            if not keep.any():
                continue
            index = np.flatnonzero(keep)
            ts_parts.append(ts[index])
            value_parts.append(values[index][:, cols])
            rank_parts.append(np.full(len(index), len(batch_keys), dtype=np.int64) << 32
                              | index.astype(np.int64))
            batch_keys.append(row_key)
            collected += len(index)
            if limit is not None and collected >= limit:
                # Recomputed per batch only while it can still move (it only ever decreases).
                all_ts = np.concatenate(ts_parts)
                cutoff = float(np.partition(all_ts, limit - 1)[limit - 1])
        if len(rows) < page_rows:
            break
        page_rows = min(page_rows * 2, _MAX_PAGE_ROWS)

    width = len(wanted or [])
    if not ts_parts:
        return TelemetrySlice(device_id, list(wanted or []), np.zeros(0),
                              np.zeros((0, width)), 0)
    ts_all = np.concatenate(ts_parts)
    values_all = np.concatenate(value_parts)
    rank_all = np.concatenate(rank_parts)
    order = np.lexsort((rank_all, ts_all))
    more = stopped_early or (limit is not None and len(order) > limit)
    if limit is not None:
        order = order[:limit]
    ts_all, values_all, rank_all = ts_all[order], values_all[order], rank_all[order]
    next_cursor = None
    if more and len(ts_all):
        last = int(rank_all[-1])
        next_cursor = TelemetryCursor(float(ts_all[-1]), batch_keys[last >> 32],
                                      last & 0xFFFFFFFF, tuple(wanted or []))
    batches = len(np.unique(rank_all >> 32))
    return TelemetrySlice(device_id, list(wanted or []), ts_all, values_all, batches,
                          next_cursor)


def _in_range(ts: npt.NDArray[np.float64], since: float | None,
              until: float | None) -> npt.NDArray[np.bool_]:
    keep = np.ones(len(ts), dtype=bool)
    if since is not None:
        keep &= ts >= since
    if until is not None:
        keep &= ts <= until
    return keep


def _after(ts: npt.NDArray[np.float64], batch: tuple[Any, ...],
           cursor: TelemetryCursor) -> npt.NDArray[np.bool_]:
    """Readings of this batch whose order key is past the cursor's."""
    index = np.arange(len(ts))
    same_ts = ts == cursor.ts
    if batch > cursor.batch:
        tie_after = same_ts
    elif batch == cursor.batch:
        tie_after = same_ts & (index > cursor.index)
    else:
        tie_after = np.zeros(len(ts), dtype=bool)
    result: npt.NDArray[np.bool_] = (ts > cursor.ts) | tie_after
    return result
