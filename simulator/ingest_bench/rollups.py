"""The ingest bench's rollup query: how long the API takes to read days of hourly rollups for
many devices, from a PostgreSQL database generated for it."""

from __future__ import annotations

import time

from rich.console import Console

from simulator.bench_database import database

__all__ = ["measure_rollup_query"]


def measure_rollup_query(console: Console, *, devices: int, days: int,
                         channels: int = 8) -> float:
    """30 days of 1-hour rollups for 100 devices x 8 channels (72,000 bucket rows) generated in a
    PostgreSQL database with the hub's schema, vacuumed and checkpointed; the median of 5 reads
    of all of them through the API's query
    (:func:`cloud_hub.maintenance.rollup_reads.read_rollups`), in milliseconds."""
    from cloud_hub.db.engine import make_engine
    from cloud_hub.maintenance.rollup_reads import read_rollups
    from cloud_hub.maintenance.rollups import _write

    with database("postgresql") as db:
        assert db.url is not None
        engine = make_engine(db.url)
        try:
            end = time.time() // 3600 * 3600
            ids = [f"roll-{i:04d}" for i in range(devices)]
            console.print(f"rollups: generating {devices} devices x {days} days x 24 h x "
                          f"{channels} channels")
            for device in ids:
                buckets = {(device, "1h", end - h * 3600.0): {
                    f"ch{c}": [360.0, 7200.0 + h, 1.0, 30.0] for c in range(channels)}
                    for h in range(days * 24)}
                with engine.begin() as conn:
                    _write(conn, buckets)
            # the history is settled, as 30-day-old rollups are: the query is timed, not the
            # background flushing of the rows this setup has just written (nor the floods')
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE telemetry_rollups")
                conn.exec_driver_sql("CHECKPOINT")
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                with engine.connect() as conn:
                    got = read_rollups(conn, device_ids=ids, resolution="1h",
                                       since=end - days * 86_400.0, until=end + 1)
                times.append((time.perf_counter() - t0) * 1000)
                assert len(got) == devices and len(got[ids[0]]["ts"]) == days * 24
        finally:
            engine.dispose()
    times.sort()
    return round(times[len(times) // 2], 1)
