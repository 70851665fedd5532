"""The ingest bench records its flood's devices in the hub's registry only: the flood is
published with the bench's own identities, so no per-device broker credential is made."""

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
