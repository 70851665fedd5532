"""The ingest transaction alone: where ``store_batch`` spends its time, statement by statement.

No broker and no hub process: batches of telemetry payloads, made the way the flood makes them,
are decoded with the hub's decoder and stored with ``store_batch`` on the hub's own engine
(``make_engine``: SQLite in WAL mode, or PostgreSQL with the hub's binary array dumper), in a
database made for the run by the hub's migrations (a PostgreSQL database is dropped after),
with the garbage collector tuned as ``cloud-hub serve`` tunes it (``settle_heap``).
Every statement is timed on the client (its round trip and the server's work); COPY, the
commit and the Python around them are the rest. Each batch comes from ``--devices`` devices in
turn, the next seqs of each, so every batch stores new rows and moves the watermarks.

At the end the rows and the device counters are counted: the run fails (exit status 1) unless
every message was stored once.

    .venv/bin/python bench/store.py      # SQLite and PostgreSQL, 1,000 and 10,000 devices
    .venv/bin/python bench/store.py --databases postgresql --devices 10000 --batches 40
    .venv/bin/python bench/store.py --databases sqlite --devices 1000 --segments 20 --batches 50

``--segments`` measures the rate segment by segment as the database grows (the last command
stores 4 M messages), to tell whether the store slows as a long-running hub's database does.
On SQLite the hub's WAL checkpointer runs beside the store, as in ``cloud-hub serve``.

Compare code by running it from each checkout (``PYTHONPATH`` first); a harness on a bare
``create_engine`` measures psycopg's own list dumper, which the hub never uses
(docs/ingest-measurements.md). Writes reports/bench/store.json and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import event, func, select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlmodel import Session  # noqa: E402

from cloud_hub.cli.serve import settle_heap  # noqa: E402
from cloud_hub.db.engine import make_engine  # noqa: E402
from cloud_hub.db.ingest_store import store_batch  # noqa: E402
from cloud_hub.db.tables import Device, TelemetryBatchRow  # noqa: E402
from cloud_hub.db.wal import WalCheckpointer  # noqa: E402
from cloud_hub.mqtt.decoding import decode_batch  # noqa: E402
from shared.messages import new_epoch  # noqa: E402
from shared.topics import DeviceTopic, Topics  # noqa: E402
from simulator.bench_database import database  # noqa: E402
from simulator.flood_stream import telemetry_payload  # noqa: E402

_PREFIX = "edgeloop/v1"


def _statement(text: str) -> str:
    """A statement's kind: its verb and table (``UPDATE stream_marks``)."""
    words = text.split()
    verb = words[0].upper() if words else "?"
    table = {"INSERT": 2, "UPDATE": 1, "DELETE": 2}.get(verb)
    if table is None:  # SELECT …: the first table after FROM
        upper = [w.upper() for w in words]
        table = upper.index("FROM") + 1 if "FROM" in upper else None
    name = words[table].strip('"(').split(".")[-1].strip('"') if table is not None else ""
    return f"{verb} {name}".strip()


class _Timer:
    """Seconds per statement kind (one entry per execution) while listening to ``engine``,
    and per commit: from the ``commit`` event to :meth:`commit_over`."""

    def __init__(self, engine: Engine) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self._commit_began: float | None = None
        self._listeners = ((engine, "before_cursor_execute", self._before),
                           (engine, "after_cursor_execute", self._after),
                           (engine, "commit", self._commit))

    def __enter__(self) -> _Timer:
        for target, name, fn in self._listeners:
            event.listen(target, name, fn)
        return self

    def __exit__(self, *_: object) -> None:
        for target, name, fn in self._listeners:
            event.remove(target, name, fn)

    def _before(self, conn: Any, *_: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: Any, _cursor: Any, text: str, *_: Any) -> None:
        self.times[_statement(text)].append(time.perf_counter() - conn.info.pop("bench_t0"))

    def _commit(self, _conn: Any) -> None:
        self._commit_began = time.perf_counter()

    def commit_over(self) -> None:
        """``store_batch`` returned, so its commit is over."""
        if self._commit_began is not None:
            self.times["commit"].append(time.perf_counter() - self._commit_began)
            self._commit_began = None


class _Fleet:
    """Devices that each send their next seq in turn, ``readings`` x ``channels`` a message."""

    def __init__(self, devices: int, readings: int, channels: int) -> None:
        self.ids = [f"store-{i:05d}" for i in range(devices)]
        self.epochs = {d: new_epoch() for d in self.ids}
        self.seqs = dict.fromkeys(self.ids, 0)
        self.channels = [f"ch{c}" for c in range(channels)]
        self.readings = readings
        self.topics = Topics(_PREFIX)
        self._next = 0
        self.t0 = float(int(time.time()) - 86_400)

    def messages(self, count: int) -> list[SimpleNamespace]:
        out = []
        for _ in range(count):
            device = self.ids[self._next % len(self.ids)]
            self._next += 1
            seq = self.seqs[device]
            self.seqs[device] = seq + 1
            start = self.t0 + seq * self.readings
            out.append(SimpleNamespace(
                topic=self.topics.device(device, DeviceTopic.TELEMETRY),
                payload=telemetry_payload(
                    device, self.epochs[device], seq, self.channels,
                    [start + k for k in range(self.readings)],
                    [[20.0 + 0.001 * ((seq + k + c) % 97) for c in range(len(self.channels))]
                     for k in range(self.readings)])))
        return out


def measure(engine: Engine, *, devices: int, batches: int, warmup: int, messages: int,
            readings: int, channels: int, segments: int = 1,
            size: Callable[[], int] | None = None) -> dict[str, Any]:
    """Store ``warmup`` + ``segments`` x ``batches`` batches; the measured ones timed, each
    segment's rate apart (the database grows from one to the next)."""
    fleet = _Fleet(devices, readings, channels)
    totals: list[float] = []
    decode_s: list[float] = []
    # at each segment's start, and at the end: messages stored, the database's size, and the
    # seconds spent so far per statement kind (a segment's are the next mark's less its own)
    marks: list[tuple[int, int | None, dict[str, float]]] = []

    def mark(stored: int) -> None:
        marks.append((stored, size() if size else None,
                      {k: sum(v) for k, v in timer.times.items()}))

    with _Timer(engine) as timer:
        times = timer.times
        for n in range(warmup + segments * batches):
            if n == warmup:
                times.clear()
            if n >= warmup and (n - warmup) % batches == 0:
                mark(n * messages)
            wire = fleet.messages(messages)
            t0 = time.perf_counter()
            batch, _ = decode_batch(fleet.topics, wire)
            t1 = time.perf_counter()
            if batch.dead_letters:
                raise RuntimeError(f"the decoder refused: {batch.dead_letters[0].reason}")
            with Session(engine) as session:
                store_batch(session, batch)
            timer.commit_over()
            if n >= warmup:
                decode_s.append(t1 - t0)
                totals.append(time.perf_counter() - t1)
        mark((warmup + segments * batches) * messages)
    measured = segments * batches
    statements = {kind: {"ms_per_batch": round(1000 * sum(s) / measured, 2),
                         "per_batch": round(len(s) / measured, 2)}
                  for kind, s in sorted(times.items(), key=lambda kv: -sum(kv[1]))}
    in_statements = sum(v["ms_per_batch"] for v in statements.values())
    mean_ms = 1000 * statistics.fmean(totals)
    sent = (warmup + measured) * messages
    with Session(engine) as session:
        rows = session.execute(select(func.count()).select_from(TelemetryBatchRow)).scalar_one()
        counted = session.execute(select(func.coalesce(func.sum(
            Device.telemetry_batches), 0))).scalar_one()
    return {
        "devices": devices, "messages_per_batch": messages, "readings_per_message": readings,
        "batches": measured,
        "store_ms_mean": round(mean_ms, 1),
        "store_ms_median": round(1000 * statistics.median(totals), 1),
        "decode_ms_mean": round(1000 * statistics.fmean(decode_s), 1),
        "messages_per_s_stored": round(messages / statistics.fmean(totals)),
        "statements": statements,
        "other_ms_per_batch": round(mean_ms - in_statements, 1),
        "segments": [_segment(i, marks[i], marks[i + 1], totals[i * batches:(i + 1) * batches])
                     for i in range(segments)],
        "sent": sent, "rows": rows, "counted": counted,
        "ok": rows == sent and counted == sent,
    }


def _segment(index: int, start: tuple[int, int | None, dict[str, float]],
             end: tuple[int, int | None, dict[str, float]], seconds: list[float]
             ) -> dict[str, Any]:
    """One segment's figures, from the marks at its start and end and its batches' times."""
    (stored, size, spent), (_, _, spent_after) = start, end
    batches, taken = len(seconds), sum(seconds)
    return {"messages_before": stored, "database_bytes_before": size,
            "messages_per_s_stored": round((end[0] - stored) / taken),
            "store_ms_mean": round(1000 * taken / batches, 1),
            "statements_ms_per_batch": {
                kind: round(1000 * (total - spent.get(kind, 0.0)) / batches, 2)
                for kind, total in spent_after.items()}}


def print_table(console: Console, result: dict[str, Any]) -> None:
    kinds: list[str] = []
    for case in result["cases"]:
        kinds += [k for k in case["statements"] if k not in kinds]
    table = Table(title="store_batch alone, ms per batch (statements timed on the client)")
    for col in ("database", "devices", "msgs", "store", "msg/s", "decode", *kinds,
                "COPY and Python", "stored once"):
        table.add_column(col, justify="right")
    for c in result["cases"]:
        table.add_row(c["database"], f"{c['devices']:,}", f"{c['messages_per_batch']:,}",
                      f"{c['store_ms_mean']:.1f}", f"{c['messages_per_s_stored']:,}",
                      f"{c['decode_ms_mean']:.1f}",
                      *[f"{c['statements'][k]['ms_per_batch']:.1f}" if k in c["statements"]
                        else "-" for k in kinds],
                      f"{c['other_ms_per_batch']:.1f}", "yes" if c["ok"] else "NO")
    console.print(table)
    for c in result["cases"]:
        if len(c["segments"]) < 2:
            continue
        grow = Table(title=f"{c['database']}, {c['devices']:,} devices: the rate as the "
                           "database grows")
        first, last = c["segments"][0], c["segments"][-1]
        # the statements whose time grew the most, first segment to last
        kinds = sorted(last["statements_ms_per_batch"],
                       key=lambda k: first["statements_ms_per_batch"].get(k, 0.0)
                       - last["statements_ms_per_batch"][k])[:4]
        for col in ("messages stored before", "database MB", "msg/s", "against the first",
                    "store ms", *kinds, "the rest"):
            grow.add_column(col, justify="right")
        for g in c["segments"]:
            size = g["database_bytes_before"]
            spent = g["statements_ms_per_batch"]
            grow.add_row(f"{g['messages_before']:,}",
                         "-" if size is None else f"{size / 1e6:,.0f}",
                         f"{g['messages_per_s_stored']:,}",
                         f"{g['messages_per_s_stored'] / first['messages_per_s_stored']:.2f}",
                         f"{g['store_ms_mean']:.1f}",
                         *[f"{spent.get(k, 0.0):.1f}" for k in kinds],
                         f"{g['store_ms_mean'] - sum(spent.get(k, 0.0) for k in kinds):.1f}")
        console.print(grow)


def _database_bytes(engine: Engine) -> int:
    """The database's size on disk: SQLite's file and its log, PostgreSQL's database."""
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database or "")
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())"))
                   .scalar_one())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--devices", default="1000,10000")
    parser.add_argument("--batches", type=int, default=20, help="measured batches a segment")
    parser.add_argument("--segments", type=int, default=1,
                        help="measure this many segments of --batches in turn, each one's rate "
                             "apart: how the store's rate holds as the database grows")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--messages", type=int, default=4000, help="messages per batch")
    parser.add_argument("--readings", type=int, default=10, help="readings per message")
    parser.add_argument("--channels", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "store.json")
    opts = parser.parse_args(argv)
    console = Console(width=220)
    settle_heap()  # the collector tuned as `cloud-hub serve` tunes it
    cases = []
    for kind in opts.databases.split(","):
        for devices in (int(d) for d in opts.devices.split(",")):
            with tempfile.TemporaryDirectory(prefix="edgeloop-store-") as tmp, \
                    database(kind) as db:
                engine = make_engine(db.url or f"sqlite:///{tmp}/hub.db")  # migrated
                checkpointer = WalCheckpointer(engine)  # as the hub runs it (SQLite only)
                checkpointer.start()
                try:
                    case = measure(engine, devices=devices, batches=opts.batches,
                                   warmup=opts.warmup, messages=opts.messages,
                                   readings=opts.readings, channels=opts.channels,
                                   segments=opts.segments,
                                   size=functools.partial(_database_bytes, engine))
                finally:
                    checkpointer.stop()
                    engine.dispose()
            cases.append({"database": kind, **case})
            console.print(f"{kind}, {devices:,} devices: {case['store_ms_mean']} ms per batch "
                          f"of {opts.messages:,}")
    result = {"cases": cases, "ok": all(c["ok"] for c in cases)}
    print_table(console, result)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"written {opts.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
