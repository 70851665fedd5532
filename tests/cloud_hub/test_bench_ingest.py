"""The ingest bench: its flood's devices are recorded in the hub's registry only (the flood is
published with the bench's own identities, so no per-device broker credential is made), and
the overload is set against the CPU of the run that found the saturation rate."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, select

from bench.ingest import enroll
from cloud_hub.db.engine import make_engine
from cloud_hub.db.enrollments import Enrollment, enrolled_among


def test_bench_enroll_records_registry_only_devices(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(url)
    try:
        ids = [f"flood-{i:04d}" for i in range(1200)]
        enroll(url, ids)
        with Session(engine) as session:
            assert enrolled_among(session, ids) == set(ids)
            rows = session.exec(select(Enrollment)).all()
        assert len(rows) == len(ids)
        assert not any(r.broker_credential for r in rows)
        assert all(r.revoked_at is None for r in rows)
    finally:
        engine.dispose()


def test_bench_compares_overload_cpu_with_the_saturation_run() -> None:
    from bench.ingest import _cpu_compared

    sat = {"hub_cpu_share": 0.5, "messages_per_cpu_s": 4000.0, "publisher_cpu_share": 0.06,
           "broker_cpu_share": 0.07, "hub_waited_for_cpu_s_per_s": 0.8, "load_average": 5.0,
           "speed_probe_ms": 8.0}
    over = {"hub_cpu_share": 0.25, "messages_per_cpu_s": 3600.0, "publisher_cpu_share": 0.08,
            "broker_cpu_share": 0.1, "hub_waited_for_cpu_s_per_s": 1.6, "load_average": 8.0,
            "speed_probe_ms": 12.5}
    got = _cpu_compared(over, sat)
    assert got is not None
    assert got["hub_cpu_share_ratio"] == 0.5
    assert got["messages_per_cpu_s_ratio"] == 0.9
    assert got["publisher_cpu_share"] == [0.06, 0.08]
    assert got["load_average"] == [5.0, 8.0]
    assert got["speed_probe_ms"] == [8.0, 12.5]
    assert _cpu_compared(over, None) is None


def test_bench_sets_two_hubs_against_one_on_postgresql_at_batch_10() -> None:
    from bench.ingest import summarize

    def case(database: str, readings: int, per_s: float, per_cpu_s: float,
             busy: float) -> dict[str, object]:
        flood = {"messages_per_s": per_s, "readings_per_s": per_s * readings,
                 "messages_per_cpu_s": per_cpu_s, "machine_busy_cores": busy,
                 "hub_rss_bytes_max": 1, "broker_rss_bytes_max": 1,
                 "publisher_cpu_us_per_message": 10.0}
        return {"database": database, "readings_per_message": readings, "flood": flood,
                "lost": 0, "duplicates": 0, "ok": True}

    cases = [case("sqlite", 10, 15000.0, 16000.0, 1.5),
             case("postgresql", 10, 10000.0, 18000.0, 1.4),
             case("postgresql", 100, 3000.0, 5000.0, 1.3)]
    two = case("postgresql", 10, 13000.0, 17100.0, 1.9)
    got = summarize(cases, two, rollup_ms=None)
    assert got["two_hub_scaling"] == 1.3, "two hubs against the one PostgreSQL hub at batch 10"
    assert got["two_hub_per_cpu_s_ratio"] == 0.95
    assert got["two_hub_machine_busy_cores"] == [1.4, 1.9]
    assert got["one_hub_messages_per_s_batch10"] == 10000.0, "the worse database"
    one = summarize(cases, None, rollup_ms=None)
    assert one["two_hub_scaling"] is None and one["two_hub_per_cpu_s_ratio"] is None
