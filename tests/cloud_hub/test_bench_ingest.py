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
           "broker_cpu_share": 0.07, "hub_waited_for_cpu_s_per_s": 0.8, "load_average": 5.0}
    over = {"hub_cpu_share": 0.25, "messages_per_cpu_s": 3600.0, "publisher_cpu_share": 0.08,
            "broker_cpu_share": 0.1, "hub_waited_for_cpu_s_per_s": 1.6, "load_average": 8.0}
    got = _cpu_compared(over, sat)
    assert got is not None
    assert got["hub_cpu_share_ratio"] == 0.5
    assert got["messages_per_cpu_s_ratio"] == 0.9
    assert got["publisher_cpu_share"] == [0.06, 0.08]
    assert got["load_average"] == [5.0, 8.0]
    assert _cpu_compared(over, None) is None
