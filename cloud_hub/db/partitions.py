"""Day partitions of the telemetry table on PostgreSQL: made ahead of the data, dropped whole.

``telemetry`` is range-partitioned by ``ts_first`` (the device's time of a batch's first
reading), one partition per UTC day, named ``telemetry_dYYYYMMDD``. A batch sent again carries
the same ``ts_first``, so it lands in the same partition; exactly-once storage rests on
``telemetry_keys`` anyway (:mod:`cloud_hub.db.tables`). Besides the days there are:

- ``telemetry_default``: rows no day partition covers (a device clock far off, or a day whose
  partition was dropped); retention deletes its old rows in bounded deletes, as on SQLite;
- ``telemetry_legacy``: the table as it was before partitioning (migration 0011), every
  ``ts_first`` below the first day made then; bounded deletes too, and dropped whole once
  all of it may go.

:func:`ensure_days` makes the partitions from yesterday to ``ahead`` days on, each as a plain
table attached to the parent (``ATTACH PARTITION`` takes a lock on the parent that ingest's
inserts do not wait for, where ``CREATE TABLE … PARTITION OF`` would stop them), after moving
into it any rows of its day the default partition holds. :func:`drop_expired` drops a
partition whole once every row in it may go: the day ended more than the retention ago, every
row was stored more than the retention ago, and the rollups folded every row (stored before
their mark). In the same transaction it records each stream's highest seq dropped
(``pruned_through``: those are not missing) and deletes the dropped batches' keys.

SQLite has no partitions: there every function here does nothing, and retention deletes rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from cloud_hub.db.engine import driver_message
from cloud_hub.db.tables import TelemetryBatchRow

__all__ = ["DAY", "Partition", "drop_expired", "ensure_days", "include_name", "list_partitions",
           "make_days", "partitioned", "qualified"]

log = logging.getLogger(__name__)

DAY = 86_400.0
_TABLE = TelemetryBatchRow.__tablename__
_DAY_NAME = re.compile(rf"^{_TABLE}_d(\d{{8}})$")
_PARTITION_NAME = re.compile(rf"^{_TABLE}_(d\d{{8}}|default|legacy)$")
_BOUNDS = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")
# Dropping a partition locks the parent against every insert: wait at most this long for the
# lock, under PostgreSQL's deadlock_timeout (1 s), so that a maintenance round gives up
# before an ingest transaction would be chosen as a deadlock's victim; the next round retries.
_LOCK_TIMEOUT = "500ms"


@dataclass(frozen=True)
class Partition:
    name: str
    lower: float | None  # None: MINVALUE, or the default partition
    upper: float | None  # None: MAXVALUE, or the default partition
    default: bool = False

    @property
    def day(self) -> dt.date | None:
        """The UTC day of a day partition (by its name); None for the others."""
        found = _DAY_NAME.match(self.name)
        return dt.datetime.strptime(found.group(1), "%Y%m%d").date() if found else None


def include_name(name: str | None, type_: str, _parents: object = None) -> bool:
    """Alembic's ``include_name`` hook: the telemetry partitions are made at run time, not by
    migrations, so autogenerate and the schema check leave them out."""
    return not (type_ == "table" and name is not None and _PARTITION_NAME.match(name))


def qualified(conn: Connection, name: str) -> str:
    """``name`` quoted, in the schema the connection's tables are in (a schema translate map,
    as the tests use, or none: the search path)."""
    schema = (conn.get_execution_options().get("schema_translate_map") or {}).get(None)
    quote = conn.dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def partitioned(conn: Connection) -> bool:
    """Whether the telemetry table is partitioned (PostgreSQL at this schema)."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"),
                        {"t": qualified(conn, _TABLE)}).scalar()
    return kind == "p"


def _bound(text_value: str) -> float | None:
    value = text_value.strip().strip("'")
    return None if value in ("MINVALUE", "MAXVALUE") else float(value)


def list_partitions(conn: Connection) -> list[Partition]:
    """The telemetry table's partitions (none where it is not partitioned)."""
    if not partitioned(conn):
        return []
    rows = conn.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t) "
        "ORDER BY c.relname"), {"t": qualified(conn, _TABLE)}).all()
    found: list[Partition] = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, default=True))
            continue
        match = _BOUNDS.match(bound)
        if match is None:  # not a range this module makes: leave it alone
            continue
        found.append(Partition(name, _bound(match.group(1)), _bound(match.group(2))))
    return found


def _day_start(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()


def _covered(partitions: Sequence[Partition], lower: float, upper: float) -> bool:
    """Whether a non-default partition overlaps [lower, upper)."""
    return any(not p.default
               and (p.lower is None or p.lower < upper)
               and (p.upper is None or p.upper > lower)
               for p in partitions)


def ensure_days(engine: Engine, *, now: float, ahead: int = 2) -> list[str]:
    """Make the day partitions from yesterday to ``ahead`` days after today (UTC) that no
    partition covers yet, each in a transaction of its own; the names made."""
    today = dt.datetime.fromtimestamp(now, tz=dt.UTC).date()
    return make_days(engine, [today + dt.timedelta(days=offset)
                              for offset in range(-1, ahead + 1)])


def make_days(engine: Engine, days: Iterable[dt.date]) -> list[str]:
    """Make a partition for each of ``days`` that no partition covers yet (moving its rows out
    of the default partition), each in a transaction of its own; the names made."""
    made: list[str] = []
    with engine.connect() as conn:
        if not partitioned(conn):
            return made
        partitions = list_partitions(conn)
    for day in sorted(set(days)):
        lower, upper = _day_start(day), _day_start(day + dt.timedelta(days=1))
        if _covered(partitions, lower, upper):
            continue
        name = f"{_TABLE}_d{day:%Y%m%d}"
        try:
            with engine.begin() as conn:
                _attach_day(conn, name, lower, upper,
                             default=next((p.name for p in partitions if p.default), None))
        except DBAPIError as exc:  # a lock not granted in time, or another hub made it
            log.warning("telemetry partitions: could not make %s now, retried next round: %s",
                        name, driver_message(exc))
            continue
        made.append(name)
        log.info("telemetry partitions: made %s", name)
    return made


def _attach_day(conn: Connection, name: str, lower: float, upper: float, *,
                default: str | None) -> None:
    conn.execute(text(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'"))
    parent, table = qualified(conn, _TABLE), qualified(conn, name)
    conn.execute(text(
        f"CREATE TABLE {table} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING STORAGE INCLUDING COMPRESSION)"))
    if default is not None:
        # Rows of this day already in the default partition move with it: attaching checks
        # the default partition holds none. Locked first, so none arrive in between.
        held = qualified(conn, default)
        conn.execute(text(f"LOCK TABLE {held} IN SHARE ROW EXCLUSIVE MODE"))
        conn.execute(text(
            f"WITH moved AS (DELETE FROM {held} WHERE ts_first >= :lo AND ts_first < :hi "
            f"RETURNING *) INSERT INTO {table} SELECT * FROM moved"), {"lo": lower, "hi": upper})
    conn.execute(text(f"ALTER TABLE {parent} ATTACH PARTITION {table} "
                      f"FOR VALUES FROM ({lower!r}) TO ({upper!r})"))


def drop_expired(engine: Engine, *, now: float, keep_s: float, folded_at: float) -> list[str]:
    """Drop every day partition (and the legacy one) that may go whole: its range ended more
    than ``keep_s`` ago, its newest row was stored more than ``keep_s`` ago and before
    ``folded_at`` (the rollups' mark). Each in a transaction of its own; the names dropped."""
    with engine.connect() as conn:
        candidates = [p for p in list_partitions(conn)
                      if not p.default and p.upper is not None and p.upper <= now - keep_s]
    dropped: list[str] = []
    for p in candidates:
        try:
            with engine.begin() as conn:
                if _drop_if_expired(conn, p.name, before=min(now - keep_s, folded_at)):
                    dropped.append(p.name)
        except DBAPIError as exc:
            log.warning("telemetry partitions: could not drop %s now, retried next round: %s",
                        p.name, driver_message(exc))
    if dropped:
        log.info("telemetry partitions: dropped %s", ", ".join(dropped))
    return dropped


def _drop_if_expired(conn: Connection, name: str, *, before: float) -> bool:
    conn.execute(text(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'"))
    table = qualified(conn, name)
    # No row may arrive while this transaction reads what it drops (a late batch of that day
    # waits, and lands in the default partition once this one is gone).
    conn.execute(text(f"LOCK TABLE {table} IN SHARE MODE"))
    newest = conn.execute(text(f"SELECT max(stored_at) FROM {table}")).scalar()
    if newest is not None and newest >= before:
        return False
    keys, marks = qualified(conn, "telemetry_keys"), qualified(conn, "stream_marks")
    conn.execute(text(
        f"UPDATE {marks} m SET pruned_through = d.top FROM "
        f"(SELECT device_id, epoch, max(seq) AS top FROM {table} GROUP BY device_id, epoch) d "
        "WHERE m.device_id = d.device_id AND m.epoch = d.epoch AND m.stream = 'telemetry' "
        "AND m.pruned_through < d.top"))
    conn.execute(text(
        f"DELETE FROM {keys} k USING {table} r WHERE k.device_id = r.device_id "
        "AND k.epoch = r.epoch AND k.seq = r.seq"))
    conn.execute(text(f"DROP TABLE {table}"))
    return True
