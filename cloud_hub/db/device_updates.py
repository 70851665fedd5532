"""Device rows as ingest changes them: created on first sight, counters added to in SQL.

Every change is an UPDATE computed by the database (``telemetry_readings =
telemetry_readings + :r``, ``last_seen`` only ever moves forward), never a value read into the
process and written back: hub processes that share a database each add what they stored, and
no count is lost or doubled. Rows are touched in device order, so that two writers take their
row locks in the same order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import Float, Integer, String, Table, any_, bindparam, case, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from cloud_hub.db import pg_bulk, sqlite_many
from cloud_hub.db.devices import insert_ignoring_conflicts_on
from cloud_hub.db.tables import Device
from shared.messages import DeviceStatus, Heartbeat, ModelState, Reported, ReportedModel, Status

__all__ = ["add_device_counts", "apply_device_records", "ensure_device_rows",
           "remember_devices"]

_devices: Table = Device.__table__  # type: ignore[attr-defined]
_c = _devices.c


class _Known:
    """Device ids this process has seen committed, per database, so that a batch of known
    devices costs no INSERT (devices are never deleted by ingest; a row deleted by someone else
    is simply not counted into until this process restarts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, set[str]] = {}

    def missing(self, url: str, device_ids: Iterable[str]) -> list[str]:
        with self._lock:
            known = self._ids.get(url, set())
            return sorted(d for d in device_ids if d not in known)

    def add(self, url: str, device_ids: Iterable[str]) -> None:
        with self._lock:
            known = self._ids.setdefault(url, set())
            if len(known) > 2_000_000:  # a bound on memory; forgetting only costs an INSERT
                known.clear()
            known.update(device_ids)


_known = _Known()


def ensure_device_rows(conn: Connection, device_ids: Iterable[str]) -> list[str]:
    """Create the rows of devices not seen before (INSERT that skips existing keys); returns
    the ids to :func:`remember_devices` once the transaction has committed."""
    missing = _known.missing(_key(conn), device_ids)
    if missing:
        insert_ignoring_conflicts_on(conn, _devices, [{"device_id": d, "tags": []}
                                                      for d in missing])
    return missing


def remember_devices(conn: Connection, device_ids: Sequence[str]) -> None:
    """Devices whose rows are committed: later batches skip their INSERT."""
    if device_ids:
        _known.add(_key(conn), device_ids)


def _key(conn: Connection) -> str:
    # One process may open several databases (tests, schemas on one PostgreSQL server).
    schema = (conn.get_execution_options().get("schema_translate_map") or {}).get(None)
    return f"{conn.engine.url}#{schema}"


_SEEN = bindparam("seen", type_=Float)
_ADD_COUNTS = (
    update(_devices)
    .where(_c.device_id == bindparam("d"))
    .values(
        telemetry_readings=_c.telemetry_readings + bindparam("r", type_=Integer),
        telemetry_batches=_c.telemetry_batches + bindparam("b", type_=Integer),
        anomalies=_c.anomalies + bindparam("a", type_=Integer),
        last_seen=case((_c.last_seen == None, _SEEN),  # noqa: E711
                       (_c.last_seen < _SEEN, _SEEN), else_=_c.last_seen),
    )
)


_COUNT_COLUMNS: pg_bulk.Columns = (("d", String), ("r", Integer), ("b", Integer), ("a", Integer),
                                   ("seen", Float))


def _add_counts_arrays() -> tuple[Any, Any]:
    """PostgreSQL: lock the rows in device order, then one UPDATE from arrays."""
    k = pg_bulk.unnest_rows(_COUNT_COLUMNS, name="k")
    lock = (select(_c.device_id)
            .where(_c.device_id == any_(bindparam("ids", type_=ARRAY(String))))
            .order_by(_c.device_id).with_for_update())
    seen = k.c.seen
    add = (update(_devices).where(_c.device_id == k.c.d).values(
        telemetry_readings=_c.telemetry_readings + k.c.r,
        telemetry_batches=_c.telemetry_batches + k.c.b,
        anomalies=_c.anomalies + k.c.a,
        last_seen=case((_c.last_seen == None, seen),  # noqa: E711
                       (_c.last_seen < seen, seen), else_=_c.last_seen)))
    return lock, add


_LOCK_DEVICES, _ADD_COUNTS_ARRAYS = _add_counts_arrays()


def add_device_counts(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add ``r`` readings, ``b`` batches and ``a`` anomalies to device ``d``, and move its
    ``last_seen`` forward to ``seen``. ``rows`` in device order."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK_DEVICES, {"ids": [r["d"] for r in rows]})
        conn.execute(_ADD_COUNTS_ARRAYS,
                     pg_bulk.as_arrays(rows, [n for n, _ in _COUNT_COLUMNS]))
    else:
        sqlite_many.executemany(conn, _ADD_COUNTS, rows)


_AV = bindparam("av", type_=String)
_HEARTBEAT = update(_devices).where(_c.device_id == bindparam("d")).values(
    heartbeat=bindparam("hb", type_=_c.heartbeat.type))
_STATUS = update(_devices).where(_c.device_id == bindparam("d")).values(
    online=bindparam("online"), status_at=bindparam("at"),
    agent_version=case((_AV == "", _c.agent_version), else_=_AV))
# A status that names the agent's runtime also records it; one without (an older agent, or
# one that has not loaded a model yet) leaves the last one known.
_STATUS_RUNTIME = update(_devices).where(_c.device_id == bindparam("d")).values(
    runtime=bindparam("rt", type_=_c.runtime.type))
_REPORTED_COLUMNS = ("reported_name", "reported_version", "reported_state", "reported_error",
                     "reported_since")
_REPORTED = update(_devices).where(_c.device_id == bindparam("d")).values(
    {name: bindparam(name) for name in _REPORTED_COLUMNS})
_REPORTED_ACTIVE = update(_devices).where(_c.device_id == bindparam("d")).values(
    {name: bindparam(name) for name in (*_REPORTED_COLUMNS, "active_name", "active_version",
                                        "active_sha256", "active_variant")})


def apply_device_records(conn: Connection, *, heartbeats: Sequence[Heartbeat],
                         statuses: Sequence[Status], reported: Sequence[Reported],
                         received: float) -> None:
    """The latest heartbeat, status and reported model state of each device, in arrival
    order (a last will carries the time it was set at connect, which is older than the
    `online` record it replaces, so ``at`` cannot order them)."""
    del received  # last_seen moves with add_device_counts
    latest_hb: dict[str, Heartbeat] = {h.device_id: h for h in heartbeats}
    if latest_hb:
        conn.execute(_HEARTBEAT, [
            {"d": d, "hb": {k: v for k, v in h.to_dict().items() if k not in ("v", "device_id")}}
            for d, h in sorted(latest_hb.items())])
    for s in statuses:
        conn.execute(_STATUS, {"d": s.device_id, "online": s.state == DeviceStatus.ONLINE,
                               "at": s.at, "av": s.agent_version})
        if s.runtime is not None:
            conn.execute(_STATUS_RUNTIME, {"d": s.device_id, "rt": msgspec.structs.asdict(
                s.runtime)})
    for r in reported:
        values: dict[str, Any] = {
            "d": r.device_id, "reported_name": r.model.name if r.model else None,
            "reported_version": r.model.version if r.model else None,
            "reported_state": r.state.value, "reported_error": r.error,
            "reported_since": r.since,
        }
        active: ReportedModel | None = r.active
        if active is None and r.state == ModelState.ACTIVE and r.model is not None:
            active = r.model
        if active is not None:
            values.update(active_name=active.name, active_version=active.version,
                          active_sha256=active.sha256, active_variant=active.variant)
            conn.execute(_REPORTED_ACTIVE, values)
        elif r.state == ModelState.ACTIVE:
            values.update(active_name=None, active_version=None, active_sha256=None,
                          active_variant=None)
            conn.execute(_REPORTED_ACTIVE, values)
        else:
            conn.execute(_REPORTED, values)
