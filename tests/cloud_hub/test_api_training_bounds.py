"""Training requests: every parameter bounded (422 naming field and bound), the parity floor
that no request can lower, and a bound on the readings one job may load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import annotated_types
import httpx
import numpy as np
import pytest
from sqlmodel import Session, select

from cloud_hub.api.schemas import TrainingSpecBody
from cloud_hub.core.config import Settings
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.jobs.request import TrainingRequest
from cloud_hub.service import Hub
from cloud_hub.training.artifact import ModelArtifact, TrainingSpec
from shared.messages import TelemetryBatch
from tests.cloud_hub.api_support import api_client
from tests.cloud_hub.helpers import enroll_devices, tiny_artifact, wait_for

EPOCH = "0123456789abcdef"  # one stream epoch per device here
pytestmark = [pytest.mark.hub]
ADMIN_KEY = "training-bounds-admin-key-0123"
ADMIN = {"X-API-Key": ADMIN_KEY}
MAX_READINGS = 1000


def _hub(data_dir: Path, **settings: Any) -> Hub:
    hub = Hub(Settings(data_dir=data_dir, admin_api_key=ADMIN_KEY,
                       training_max_readings=MAX_READINGS, **settings))
    hub.ensure_admin_key()
    enroll_devices(hub)
    return hub


def _store_readings(hub: Hub, batches: int = 1) -> None:
    """Telemetry of pump-1 for a job to select (100 readings a batch): a request selecting
    none is refused."""
    with Session(hub.engine) as session:
        store_batch(session, IngestBatch(telemetry=[
            TelemetryBatch(device_id="pump-1", epoch=EPOCH, seq=s, channels=["a"],
                           ts=[s * 100.0 + i for i in range(100)], values=[[1.0]] * 100)
            for s in range(batches)]))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = _hub(tmp_path / "hub")
    try:
        yield h
    finally:
        h.engine.dispose()


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    with api_client(hub) as client:
        yield client


def _upper_bounds() -> dict[str, tuple[float, bool]]:
    """Per numeric spec field: its upper bound and whether the bound itself is allowed."""
    bounds: dict[str, tuple[float, bool]] = {}
    for name, info in TrainingSpecBody.model_fields.items():
        for meta in info.metadata:
            if isinstance(meta, annotated_types.Le):
                bounds[name] = (float(meta.le), True)  # type: ignore[arg-type]
            elif isinstance(meta, annotated_types.Lt):
                bounds[name] = (float(meta.lt), False)  # type: ignore[arg-type]
    return bounds


def test_the_request_spec_covers_every_training_spec_field() -> None:
    assert set(TrainingSpecBody.model_fields) == {f.name for f in fields(TrainingSpec)}
    defaults = TrainingSpec()
    for name, info in TrainingSpecBody.model_fields.items():
        assert info.default == getattr(defaults, name), name


def test_every_numeric_training_parameter_has_an_upper_bound() -> None:
    numeric = {name for name, info in TrainingSpecBody.model_fields.items()
               if info.annotation in (int, float)}
    assert numeric - set(_upper_bounds()) == set()


@pytest.mark.parametrize("field", sorted(_upper_bounds()))
def test_a_value_above_its_bound_is_422_naming_field_and_bound(
    api: httpx.Client, field: str
) -> None:
    bound, inclusive = _upper_bounds()[field]
    integer = TrainingSpecBody.model_fields[field].annotation is int
    value: float = (int(bound) + 1 if integer else bound * 1.5 + 1) if inclusive else bound
    response = api.post("/api/v1/training-jobs", json={"name": "m", "spec": {field: value}},
                        headers=ADMIN)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "spec", field]
    shown = f"{int(bound)}" if bound == int(bound) else f"{bound}"
    assert shown in error["msg"], error


def test_lists_and_ids_in_a_training_request_are_bounded(api: httpx.Client) -> None:
    for body, loc in [
        ({"name": "m", "devices": ["ok", "bad id!"]}, ["body", "devices", 1]),
        ({"name": "m", "devices": [f"d{i}" for i in range(10_001)]}, ["body", "devices"]),
        ({"name": "m", "channels": [f"c{i}" for i in range(65)]}, ["body", "channels"]),
        ({"name": "m", "spec": {"family": "transformer"}}, ["body", "spec", "family"]),
        ({"name": "m", "spec": {"score_reduce": "median"}}, ["body", "spec", "score_reduce"]),
        ({"name": "m", "spec": {"windw": 3}}, ["body", "spec", "windw"]),
    ]:
        response = api.post("/api/v1/training-jobs", json=body, headers=ADMIN)
        assert response.status_code == 422, (loc, response.text)
        assert response.json()["detail"][0]["loc"] == loc


def test_no_request_can_lower_the_parity_floor(hub: Hub, api: httpx.Client) -> None:
    _store_readings(hub)
    for gate in (0.0, 0.5, 0.98):
        response = api.post("/api/v1/training-jobs",
                            json={"name": "m", "spec": {"min_agreement": gate}}, headers=ADMIN)
        assert response.status_code == 422, response.text
        error = response.json()["detail"][0]
        assert error["loc"] == ["body", "spec", "min_agreement"]
        assert "parity floor 0.99" in error["msg"]
    stricter = api.post("/api/v1/training-jobs",
                        json={"name": "m", "spec": {"min_agreement": 0.999}}, headers=ADMIN)
    assert stricter.status_code == 202
    assert stricter.json()["request"]["spec"] == {"min_agreement": 0.999}
    response = api.post("/api/v1/training-jobs/csv",
                        params={"name": "m", "spec": json.dumps({"min_agreement": 0.5})},
                        content=b"a,b\n1,2\n3,4\n", headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "spec", "min_agreement"]
    response = api.post("/api/v1/training-jobs/csv",
                        params={"name": "m", "spec": json.dumps({"epochs": 10**6})},
                        content=b"a,b\n1,2\n3,4\n", headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "spec", "epochs"]


def test_a_higher_floor_raises_the_default_gate_and_says_so(tmp_path: Path) -> None:
    hub = _hub(tmp_path, min_parity_agreement=0.995)
    _store_readings(hub)
    try:
        with api_client(hub) as api:
            created = api.post("/api/v1/training-jobs", json={"name": "m"}, headers=ADMIN)
            assert created.status_code == 202
            assert created.json()["request"]["spec"] == {"min_agreement": 0.995}
            refused = api.post("/api/v1/training-jobs",
                               json={"name": "m", "spec": {"min_agreement": 0.99}},
                               headers=ADMIN)
            assert refused.status_code == 422
            assert "parity floor 0.995" in refused.json()["detail"][0]["msg"]
    finally:
        hub.engine.dispose()


def test_a_training_request_selecting_too_many_readings_is_refused(
    hub: Hub, api: httpx.Client
) -> None:
    _store_readings(hub, batches=12)
    response = api.post("/api/v1/training-jobs", json={"name": "m"}, headers=ADMIN)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "devices"]
    assert "select 1200 readings" in error["msg"] and f"at most {MAX_READINGS}" in error["msg"]
    narrowed = api.post("/api/v1/training-jobs", json={"name": "m", "since": 300.0},
                        headers=ADMIN)
    assert narrowed.status_code == 202, narrowed.text
    rows = b"a,b\n" + b"1.0,2.0\n" * (MAX_READINGS + 1)
    response = api.post("/api/v1/training-jobs/csv", params={"name": "m"}, content=rows,
                        headers=ADMIN)
    assert response.status_code == 422
    assert f"{MAX_READINGS + 1} data rows" in response.json()["detail"][0]["msg"]


def test_a_stored_request_below_the_floor_is_trained_at_the_floor(tmp_path: Path) -> None:
    seen: list[TrainingSpec] = []

    def run(readings: np.ndarray, channels: list[str], spec: TrainingSpec, **_: Any
            ) -> ModelArtifact:
        seen.append(spec)
        raise RuntimeError("stop here: only the spec is looked at")

    hub = Hub(Settings(data_dir=tmp_path, admin_api_key=ADMIN_KEY), run_training=run)
    enroll_devices(hub)
    with Session(hub.engine) as session:
        store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
            device_id="pump-1", epoch=EPOCH, seq=0, channels=["a"], ts=[1.0, 2.0],
            values=[[1.0], [2.0]])]))
    hub.jobs.start()
    try:
        with Session(hub.engine) as session:  # behind the API's back, e.g. an old request
            hub.jobs.submit(session, name="m", request=TrainingRequest(
                name="m", spec={"min_agreement": 0.2}))
        wait_for(lambda: seen, timeout=10, what="the job to start training")
    finally:
        hub.jobs.stop()
        hub.engine.dispose()
    assert seen[0].min_agreement == 0.99


def test_the_hub_judges_every_registered_model_by_its_floor(hub: Hub) -> None:
    lax = tiny_artifact(agreement=0.95)
    lax = replace(lax, parity=replace(lax.parity, min_agreement=0.5))
    assert lax.parity.passed  # as made, by a gate of 0.5
    name, version = hub.register(lax, name="lax-ae")
    with Session(hub.engine) as session:
        record = session.exec(select(ModelVersion).where(
            ModelVersion.name == name, ModelVersion.version == version)).one()
        assert record.parity_passed is False
        assert record.parity["min_agreement"] == 0.99
