"""REST API: requests of the right shape that name nothing, make no sense together, or act on
something already finished are refused with a status and a message that says what was wrong
(Schemathesis checks the shapes; these are the requests it cannot make up)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import Session, select

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.db.devices import ensure_devices
from cloud_hub.db.drift_tables import RetrainRun
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.registry_tables import ModelRelease, TrainingJob
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import tiny_artifact

pytestmark = [pytest.mark.integration, pytest.mark.hub]
EPOCH = "0123456789abcdef"
T0 = 1_700_000_000.0 - 1_700_000_000.0 % 3600  # on an hour


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    server = serve_in_thread(hub)
    try:
        with httpx.Client(base_url=server.base_url + "/api/v1", timeout=30,
                          headers={"X-API-Key": ADMIN_KEY}) as client:
            yield client
    finally:
        server.stop()


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    """The one problem of a 422 (or the detail of another error), after checking the status."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    if isinstance(detail, list):
        assert len(detail) == 1, detail
        return detail[0]  # type: ignore[no-any-return]
    return {"msg": detail}


def _telemetry(hub: Hub, device: str = "pump-1", batches: int = 12) -> None:
    """Readings every 10 s for an hour from T0, as five-minute batches."""
    with Session(hub.engine) as session:
        store_batch(session, IngestBatch(telemetry=[TelemetryBatch(
            device_id=device, epoch=EPOCH, seq=s, channels=["a"],
            ts=[T0 + 300.0 * s + 10.0 * i for i in range(30)], values=[[1.0]] * 30)
            for s in range(batches)]), now=T0)


def test_a_telemetry_range_ending_before_it_starts_is_422_naming_its_end(
    hub: Hub, api: httpx.Client
) -> None:
    _telemetry(hub)
    problem = _problem(api.get("/telemetry", params={
        "device_id": "pump-1", "since": T0 + 600, "until": T0}), 422)
    assert problem["loc"] == ["query", "until"]
    assert "before since" in str(problem["msg"])
    for resolution in ("raw", "1m", "1h"):
        problem = _problem(api.get("/devices/pump-1/telemetry", params={
            "from": T0 + 600, "to": T0, "resolution": resolution}), 422)
        assert problem["loc"] == ["query", "to"], resolution
        assert "before from" in str(problem["msg"])
    same = api.get("/devices/pump-1/telemetry", params={"from": T0, "to": T0})
    assert same.status_code == 200 and same.json()["ts"] == [T0]


def test_rollups_of_more_buckets_than_the_limit_are_422_saying_how_many(
    hub: Hub, api: httpx.Client
) -> None:
    _telemetry(hub)
    hub.maintenance_tick(T0 + 2 * 3600)  # 60 one-minute buckets, one one-hour bucket
    problem = _problem(api.get("/devices/pump-1/telemetry",
                               params={"resolution": "1m", "limit": 59}), 422)
    assert problem["loc"] == ["query", "limit"]
    assert "60 1m buckets" in str(problem["msg"]) and "limit 59" in str(problem["msg"])
    fits = api.get("/devices/pump-1/telemetry", params={"resolution": "1m", "limit": 60})
    assert fits.status_code == 200 and len(fits.json()["ts"]) == 60
    narrowed = api.get("/devices/pump-1/telemetry", params={
        "resolution": "1m", "limit": 59, "from": T0 + 60})
    assert narrowed.status_code == 200 and len(narrowed.json()["ts"]) == 59
    hourly = api.get("/devices/pump-1/telemetry", params={"resolution": "1h", "limit": 1})
    assert hourly.status_code == 200 and hourly.json()["ts"] == [T0]


def test_retiring_a_retired_model_is_409_and_keeps_when_it_was_retired(
    hub: Hub, api: httpx.Client
) -> None:
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    assert api.post(f"/models/{name}/{version}/publish").status_code == 200
    first = api.post(f"/models/{name}/{version}/retire")
    assert first.status_code == 200, first.text
    again = _problem(api.post(f"/models/{name}/{version}/retire"), 409)
    assert "already retired" in str(again["msg"])
    assert api.get(f"/models/{name}/{version}").json()["retired_at"] == first.json()["retired_at"]


def test_revoking_a_revoked_api_key_is_409_and_keeps_when_it_was_revoked(
    api: httpx.Client,
) -> None:
    created = api.post("/api-keys", json={"name": "temp", "scope": "read"}).json()
    first = api.delete(f"/api-keys/{created['id']}")
    assert first.status_code == 200 and first.json()["revoked_at"] is not None
    again = _problem(api.delete(f"/api-keys/{created['id']}"), 409)
    assert "already revoked" in str(again["msg"])
    listed = {k["id"]: k for k in api.get("/api-keys").json()}
    assert listed[created["id"]]["revoked_at"] == first.json()["revoked_at"]


def test_revoking_a_revoked_device_is_409_and_an_unknown_one_404(
    hub: Hub, api: httpx.Client
) -> None:
    assert api.post("/devices/pump-4/revoke").status_code == 200
    again = _problem(api.post("/devices/pump-4/revoke"), 409)
    assert "already revoked" in str(again["msg"]) and "pump-4" in str(again["msg"])
    unknown = _problem(api.post("/devices/pump-404/revoke"), 404)
    assert "not enrolled" in str(unknown["msg"])


def test_a_model_rollback_that_would_move_no_device_is_refused_and_releases_nothing(
    hub: Hub, api: httpx.Client
) -> None:
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    assert api.post(f"/models/{name}/{version}/publish").status_code == 200
    empty = _problem(api.post(f"/models/{name}/{version}/rollback", json={"devices": []}), 422)
    assert empty["loc"] == ["body", "devices"]
    nobody = _problem(api.post(f"/models/{name}/{version}/rollback", json={}), 409)
    assert "no enrolled device runs" in str(nobody["msg"]) and name in str(nobody["msg"])
    with Session(hub.engine) as session:
        assert len(session.exec(select(ModelRelease)).all()) == 1, "a rollback released it"


def test_a_retraining_of_a_revoked_device_is_422_naming_it(hub: Hub, api: httpx.Client) -> None:
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    with Session(hub.engine) as session:
        for row in ensure_devices(session, ["pump-5", "pump-6"]).values():
            row.active_name, row.active_version, row.group = name, version, "line-5"
            session.add(row)
        session.commit()
    hub.enrollment.revoke("pump-6")
    problem = _problem(api.post("/retrain-runs", json={"devices": ["pump-5", "pump-6"],
                                                       "reason": "recalibrated"}), 422)
    assert problem["loc"] == ["body", "devices", 1]
    assert "'pump-6' is not enrolled" in str(problem["msg"])
    by_group = api.post("/retrain-runs", json={"group": "line-5", "reason": "recalibrated"})
    assert by_group.status_code == 201, by_group.text
    assert by_group.json()["devices"] == ["pump-5"]
    with Session(hub.engine) as session:
        assert len(session.exec(select(RetrainRun)).all()) == 1


def test_a_training_job_for_a_device_nobody_enrolled_is_422_naming_it(
    hub: Hub, api: httpx.Client
) -> None:
    problem = _problem(api.post("/training-jobs", json={"name": "m",
                                                        "devices": ["pump-1", "pmup-2"]}), 422)
    assert problem["loc"] == ["body", "devices", 1]
    assert "'pmup-2' is not enrolled" in str(problem["msg"])
    with Session(hub.engine) as session:
        assert session.exec(select(TrainingJob)).all() == [], "a job was queued"
