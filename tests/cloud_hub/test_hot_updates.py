"""The tables every ingest transaction updates keep room on their pages however the schema was
made (:data:`cloud_hub.db.tables.HOT_FILLFACTOR`), so that their updates are HOT.

Serial (``make test`` runs it after the workers, listed in ``SERIAL_TESTS``): PostgreSQL can
reuse a page's dead row versions, and so keep an update on its page, only once no transaction
could still see them, and a transaction with an xid open in *any* database of the server holds
that back for every other database (each new snapshot's xmin is the oldest xid running). Beside
another worker's tests that share was 82% of 11,000 updates once in two runs of the suite, and
74% of 6,000 with a write transaction held open in another database on purpose; alone, every
update of this test is HOT. So it runs with no other test on the server, and waits before each
batch until no other session holds an xid (a moment's autovacuum analyze, say).
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.migrate import upgrade
from cloud_hub.db.tables import HOT_FILLFACTOR
from shared.messages import TelemetryBatch
from tests.cloud_hub.helpers import wait_for
from tests.pg import made_pg_database

pytestmark = [pytest.mark.hub, pytest.mark.serial]


def no_other_xid(engine: Engine) -> bool:
    """No other session of the server has a transaction with an xid open."""
    with engine.connect() as conn:
        return not conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()")).scalar()


@pytest.mark.parametrize("fresh", ["create", "migrate"])
def test_postgres_updates_of_marks_and_device_counters_stay_on_their_page(fresh: str) -> None:
    """At the default fillfactor, about one in ten of these updates was HOT
    (docs/ingest-measurements.md)."""
    devices = [f"pump-{i:04d}" for i in range(1000)]
    with made_pg_database("edgeloop_hot_") as url:
        engine = create_engine(url)
        try:
            upgrade(engine, fresh=fresh)
            with engine.connect() as conn:
                options = dict(conn.execute(text(
                    "SELECT relname, reloptions FROM pg_class WHERE relname IN "
                    "('devices', 'stream_marks') AND relkind = 'r'")).all())
            assert options == {"devices": [f"fillfactor={HOT_FILLFACTOR}"],
                               "stream_marks": [f"fillfactor={HOT_FILLFACTOR}"]}
            for seq in range(6):
                wait_for(lambda: no_other_xid(engine), timeout=60.0,
                         what="no other transaction with an xid on the server")
                with Session(engine) as session:
                    store_batch(session, IngestBatch(telemetry=[
                        TelemetryBatch(device_id=d, epoch="0123456789abcdef", seq=seq,
                                       channels=["a"], ts=[float(seq)], values=[[1.0]])
                        for d in devices]))
            # Each batch: per device, one counter update; per mark, the upsert (an update from
            # the second batch on) and the watermark's.
            expected = {"devices": 6 * 1000, "stream_marks": (5 + 6) * 1000}

            def updates() -> dict[str, tuple[int, int]]:
                with engine.connect() as conn:  # the statistics arrive within seconds
                    rows = {name: (upd, hot) for name, upd, hot in conn.execute(text(
                        "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                        "WHERE relname IN ('devices', 'stream_marks')"))}
                done = all(rows.get(t, (0, 0))[0] >= n for t, n in expected.items())
                return rows if done else {}

            counted = wait_for(updates, timeout=60.0, what="the update statistics")
            for table, (upd, hot) in counted.items():
                assert hot >= 0.9 * upd, f"{table}: {hot} of {upd} updates were HOT"
        finally:
            engine.dispose()
