"""States and policies read back typed from a real database, stored as the plain values an
older hub wrote (no migration), and refused when they are not one of their kind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlmodel import Session, SQLModel, col, select

from cloud_hub.core.states import IncidentState, JobStatus, RolloutStatus
from cloud_hub.db.engine import make_engine  # every table on SQLModel.metadata
from cloud_hub.db.ops_tables import Incident
from cloud_hub.db.registry_tables import Rollout, TrainingJob
from cloud_hub.db.types import StrEnumType
from cloud_hub.jobs.request import FederatedSet, TrainingRequest, UploadedSet
from cloud_hub.rollouts.policy import RolloutPolicy, RolloutTarget


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        yield e
    finally:
        e.dispose()


def _rollout(**fields: object) -> Rollout:
    return Rollout(model_name="pump-ae", model_version=1, stages=[["pump-1"]], created_at=1.0,
                   **fields)  # type: ignore[arg-type]


def test_a_rollout_reads_back_its_status_policy_and_target_typed(engine: Engine) -> None:
    policy = RolloutPolicy(canary_size=2, min_observation_s=5.0)
    with Session(engine) as session:
        session.add(_rollout(target=RolloutTarget(group="plant-a", percent=50), policy=policy))
        session.commit()
    with engine.connect() as conn:  # stored as the plain strings and JSON of before
        status, stored = conn.execute(text("SELECT status, policy FROM rollouts")).one()
    assert status == "running" and '"canary_size": 2' in stored
    with Session(engine) as session:
        rollout = session.exec(select(Rollout)).one()
        assert rollout.status is RolloutStatus.RUNNING
        assert rollout.policy == policy and rollout.policy.max_failure_ratio == 0.2
        assert rollout.target == RolloutTarget(group="plant-a", percent=50)
        assert session.exec(select(Rollout).where(
            col(Rollout.status).in_((RolloutStatus.RUNNING,)))).one().id == rollout.id


def test_rows_written_by_an_older_hub_read_back_as_members(engine: Engine) -> None:
    with engine.begin() as conn:  # what a hub before the enums wrote: strings and dicts
        conn.execute(text(
            "INSERT INTO training_jobs (name, status, request, progress, created_at) "
            "VALUES ('pump-ae', 'cancelled', '{\"name\": \"pump-ae\"}', '{}', 1.0)"))
        conn.execute(text(
            "INSERT INTO rollouts (model_name, model_version, status, target, policy, stage, "
            "stages, created_at) VALUES ('pump-ae', 1, 'rolling_back', '{\"devices\": "
            "[\"pump-1\"], \"group\": null, \"tags\": null, \"percent\": 100}', "
            "'{\"canary_size\": 1, \"canary_percent\": null, \"wave_size\": 10, "
            "\"min_observation_s\": 30.0, \"max_failure_ratio\": 0.2, "
            "\"max_anomaly_rate_increase\": 2.0, \"stage_timeout_s\": 600.0}', 0, "
            "'[[\"pump-1\"]]', 1.0)"))
    with Session(engine) as session:
        job = session.exec(select(TrainingJob)).one()
        assert job.status is JobStatus.CANCELLED and job.status.finished
        rollout = session.exec(select(Rollout)).one()
        assert rollout.status is RolloutStatus.ROLLING_BACK and rollout.status.active
        assert rollout.policy == RolloutPolicy() and rollout.target.devices == ["pump-1"]


def test_a_value_outside_its_enum_is_refused_where_it_is_written(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Incident(device_id="pump-1", state="closed", started_at=0, ended_at=1,
                             opened_at=1, last_event_at=1, updated_at=1, peak_score=1,
                             peak_threshold=0.5, model_name="m", model_version=1))
        with pytest.raises(StatementError, match="'closed' is not a IncidentState"):
            session.commit()
    with Session(engine) as session:
        assert session.exec(select(Incident)).all() == []
        session.add(Incident(device_id="pump-1", started_at=0, ended_at=1, opened_at=1,
                             last_event_at=1, updated_at=1, peak_score=1, peak_threshold=0.5,
                             model_name="m", model_version=1))
        session.commit()
        assert session.exec(select(Incident)).one().state is IncidentState.OPEN


def test_a_policy_that_breaks_its_bounds_is_refused_where_it_is_written(
        engine: Engine) -> None:
    with Session(engine) as session:
        session.add(_rollout(target=RolloutTarget(),
                             policy={"canary_size": 0}))
        with pytest.raises(StatementError, match="canary_size"):
            session.commit()


def test_a_training_request_reads_back_typed_and_an_old_row_still_loads(
        engine: Engine) -> None:
    asked = TrainingRequest(name="pump-ae", spec={"window": 8}, upload=UploadedSet(
        file="up-1.npy", rows=100, channels=["pressure"]))
    with Session(engine) as session:
        session.add(TrainingJob(name="pump-ae", request=asked, created_at=1.0))
        # what the API stored before the request was typed: its body's fields and the spec
        session.add(TrainingJob(name="old", created_at=2.0, request={
            "name": "old", "devices": ["pump-1"], "channels": None, "since": None,
            "until": 10.0, "spec": {"epochs": 2}}))
        session.commit()
    with Session(engine) as session:
        new, old = session.exec(select(TrainingJob).order_by(col(TrainingJob.id))).all()
        assert new.request == asked and new.request.upload is not None
        assert new.request.training_spec().window == 8
        assert old.request.devices == ["pump-1"] and old.request.until == 10.0
        assert old.request.training_spec().epochs == 2 and not old.request.exclude_anomalies


def test_a_training_request_names_an_unknown_spec_field_or_two_sources() -> None:
    with pytest.raises(ValidationError, match="unknown TrainingSpec field.*windw"):
        TrainingRequest(spec={"windw": 8})
    with pytest.raises(ValidationError, match="not both"):
        TrainingRequest(upload=UploadedSet(file="f", rows=1, channels=["a"]),
                        federated=FederatedSet(devices=["pump-1"]))


# stream_marks.stream holds cloud_hub.db.marks.Stream values but stays a plain string: ingest
# writes it through PostgreSQL arrays on its hot path, where a per-value conversion is not free.
_PLAIN_ON_PURPOSE = {("stream_marks", "stream")}
_STATE_NAMES = {"status", "state", "kind", "trigger", "scope", "source", "event", "stream"}


def test_every_state_column_of_every_table_holds_an_enum() -> None:
    """A new status/state/kind column declared as a bare string fails here."""
    plain = [(t.name, c.name) for t in SQLModel.metadata.sorted_tables for c in t.columns
             if (c.name in _STATE_NAMES or c.name.endswith(("_state", "_status")))
             and not isinstance(c.type, StrEnumType)
             and (t.name, c.name) not in _PLAIN_ON_PURPOSE]
    assert plain == []
