"""Every list route pages in SQL: bounded ``limit``, stable order, a cursor to the next page,
and no listing reads more rows (or model bytes) than its page needs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import event
from sqlmodel import Session

from cloud_hub.api.main import create_app
from cloud_hub.api.paging import NEXT_CURSOR_HEADER
from cloud_hub.core.config import Settings
from cloud_hub.db.ingest_store import DeadLetterRecord, IngestBatch, store_batch
from cloud_hub.db.queries import read_telemetry
from cloud_hub.db.tables import TelemetryBatchRow
from cloud_hub.jobs.request import TrainingRequest
from cloud_hub.service import Hub
from shared.messages import AnomalyEvent, ModelRef, TelemetryBatch
from tests.cloud_hub.api_support import api_client
from tests.cloud_hub.helpers import tiny_artifact

pytestmark = [pytest.mark.hub]
ADMIN_KEY = "pagination-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub's database and API without MQTT (listings need no broker)."""
    h = Hub(Settings(data_dir=tmp_path / "hub", admin_api_key=ADMIN_KEY))
    h.ensure_admin_key()
    try:
        yield h
    finally:
        h.engine.dispose()


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    with api_client(hub) as client:
        yield client


def _store(hub: Hub, batch: IngestBatch, now: float = 1000.0) -> None:
    with Session(hub.engine) as session:
        store_batch(session, batch, now=now)


def _walk(api: httpx.Client, path: str, **params: Any) -> tuple[list[Any], int]:
    """Every item of a listing, page by page; and how many pages it took."""
    items: list[Any] = []
    pages = 0
    query = dict(params)
    while True:
        response = api.get(path, params=query, headers=ADMIN)
        assert response.status_code == 200, response.text
        pages += 1
        items.extend(response.json())
        cursor = response.headers.get(NEXT_CURSOR_HEADER)
        if cursor is None:
            assert "link" not in response.headers
            return items, pages
        assert f"cursor={cursor}" in response.headers["link"]
        query["cursor"] = cursor


class StatementLog:
    """Every SQL statement the engine runs, and how many telemetry rows the ORM loaded."""

    def __init__(self, hub: Hub) -> None:
        self.statements: list[str] = []
        self.telemetry_rows = 0
        self._engine = hub.engine
        event.listen(hub.engine, "before_cursor_execute", self._sql)
        event.listen(TelemetryBatchRow, "load", self._loaded)

    def _sql(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(statement)

    def _loaded(self, *_args: Any) -> None:
        self.telemetry_rows += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._sql)
        event.remove(TelemetryBatchRow, "load", self._loaded)

    def selects_from(self, table: str) -> list[str]:
        return [s for s in self.statements
                if s.lstrip().upper().startswith("SELECT") and re.search(
                    rf"\bFROM {table}\b", s)]


@pytest.fixture
def sql(hub: Hub) -> Iterator[StatementLog]:
    log = StatementLog(hub)
    try:
        yield log
    finally:
        log.close()


def _telemetry(device: str, seq: int, ts: list[float]) -> TelemetryBatch:
    return TelemetryBatch(
            epoch="0123456789abcdef", device_id=device, seq=seq, channels=["a", "b"], ts=ts,
                          values=[[t, -t] for t in ts])


def test_telemetry_reads_only_the_batches_its_page_needs(
    hub: Hub, api: httpx.Client, sql: StatementLog
) -> None:
    batches = [_telemetry("pump-1", seq, [seq * 10.0 + i for i in range(5)])
               for seq in range(2000)]
    for i in range(0, len(batches), 500):
        _store(hub, IngestBatch(telemetry=batches[i:i + 500]))
    sql.statements.clear()
    response = api.get("/api/v1/telemetry", params={"device_id": "pump-1", "limit": 10},
                       headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["ts"] == [0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    # The old route unpacked all 2,000 batches (10,000 readings) and then cut 10.
    assert sql.telemetry_rows <= 256
    selects = sql.selects_from("telemetry")
    assert selects and all("LIMIT" in s.upper() for s in selects), selects
    assert response.headers[NEXT_CURSOR_HEADER]


def test_telemetry_pages_join_up_to_the_whole_series(hub: Hub, api: httpx.Client) -> None:
    # Overlapping batches, equal timestamps across batches, and a batch out of order.
    rng = np.random.default_rng(7)
    batches = []
    for seq in range(60):
        start = float(rng.integers(0, 200))
        ts = sorted(float(t) for t in start + rng.integers(0, 6, size=int(rng.integers(1, 8))))
        batches.append(_telemetry("pump-2", seq, ts))
    _store(hub, IngestBatch(telemetry=batches))
    with Session(hub.engine) as session:
        whole = read_telemetry(session, device_id="pump-2")
    assert whole.next_cursor is None
    for limit in (1, 7, 50):
        ts: list[float] = []
        values: list[list[float]] = []
        query: dict[str, Any] = {"device_id": "pump-2", "limit": limit, "since": 20}
        while True:
            response = api.get("/api/v1/telemetry", params=query, headers=ADMIN)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["ts"]) <= limit
            ts += page["ts"]
            values += page["values"]
            if NEXT_CURSOR_HEADER not in response.headers:
                break
            query["cursor"] = response.headers[NEXT_CURSOR_HEADER]
        keep = whole.ts >= 20
        assert ts == whole.ts[keep].tolist()
        assert values == whole.values[keep].tolist()
        assert sorted(ts) == ts


def test_telemetry_page_of_a_device_with_no_data_is_empty(api: httpx.Client) -> None:
    response = api.get("/api/v1/telemetry", params={"device_id": "nobody"}, headers=ADMIN)
    assert response.json() == {"device_id": "nobody", "channels": [], "ts": [], "values": []}
    assert NEXT_CURSOR_HEADER not in response.headers


def test_anomalies_devices_summary_and_dead_letters_page_without_gaps(
    hub: Hub, api: httpx.Client, sql: StatementLog
) -> None:
    model = ModelRef(name="m", version=1)
    for part in range(5):  # five commits, so stored_at repeats within each
        devices = [f"dev-{d:02d}" for d in range(part * 5, part * 5 + 5)]
        _store(hub, IngestBatch(
            telemetry=[_telemetry(d, 0, [1.0, 2.0]) for d in devices],
            anomalies=[AnomalyEvent(
                    epoch="0123456789abcdef", device_id=d, seq=s, ts=(1.0, 2.0), score=2.0,
                                    threshold=1.0, model=model, channels=["a"],
                                    detected_at=3.0)
                       for d in devices for s in range(3)],
            dead_letters=[DeadLetterRecord(topic=f"t/{part}/{i}", reason="bad", payload=b"x",
                                           received_at=1000.0 + part) for i in range(4)],
        ), now=1000.0 + part)
    sql.statements.clear()
    anomalies, pages = _walk(api, "/api/v1/anomalies", limit=4)
    assert pages == 19  # 75 events in pages of 4
    keys = [(a["stored_at"], a["device_id"], a["seq"]) for a in anomalies]
    assert len(keys) == 75 and keys == sorted(keys) and len(set(keys)) == 75
    devices, _ = _walk(api, "/api/v1/devices", limit=6)
    assert [d["device_id"] for d in devices] == [f"dev-{d:02d}" for d in range(25)]
    summary, _ = _walk(api, "/api/v1/telemetry/summary", limit=10)
    assert [s["device_id"] for s in summary] == [f"dev-{d:02d}" for d in range(25)]
    dead, _ = _walk(api, "/api/v1/dead-letters", limit=3)
    ids = [d["id"] for d in dead]
    assert len(ids) == 20 and ids == sorted(ids, reverse=True)
    for table in ("anomalies", "devices", "dead_letters"):
        assert all("LIMIT" in s.upper() for s in sql.selects_from(table)
                   if "api_keys" not in s), table


def test_device_tag_filter_is_done_in_sql(hub: Hub, api: httpx.Client) -> None:
    _store(hub, IngestBatch(telemetry=[_telemetry(f"t-{i}", 0, [1.0]) for i in range(6)]))
    for i in range(6):
        tags = ["even"] if i % 2 == 0 else ['od"d', "x"]
        assert api.patch(f"/api/v1/devices/t-{i}", json={"tags": tags},
                         headers=ADMIN).status_code == 200
    even, pages = _walk(api, "/api/v1/devices", tag="even", limit=2)
    assert [d["device_id"] for d in even] == ["t-0", "t-2", "t-4"] and pages == 2
    odd, _ = _walk(api, "/api/v1/devices", tag='od"d')
    assert [d["device_id"] for d in odd] == ["t-1", "t-3", "t-5"]
    assert _walk(api, "/api/v1/devices", tag="d")[0] == []


def test_models_listing_never_reads_model_bytes(
    hub: Hub, api: httpx.Client, sql: StatementLog
) -> None:
    for _ in range(5):
        hub.register(tiny_artifact(), name="pump-ae")
    hub.register(tiny_artifact(), name="fan-ae")
    sql.statements.clear()
    models, pages = _walk(api, "/api/v1/models", limit=2)
    assert [(m["name"], m["version"]) for m in models] == [
        ("fan-ae", 1), *[("pump-ae", v) for v in range(1, 6)]]
    assert pages == 3
    selects = sql.selects_from("models")
    assert selects and all("tflite" not in s and "manifest" not in s for s in selects), selects
    assert all("LIMIT" in s.upper() for s in selects)


def test_jobs_rollouts_and_keys_page_newest_first(hub: Hub, api: httpx.Client) -> None:
    for i in range(5):
        assert api.post("/api/v1/api-keys", json={"name": f"k{i}", "scope": "read"},
                        headers=ADMIN).status_code == 201
    keys, pages = _walk(api, "/api/v1/api-keys", limit=2)
    assert [k["id"] for k in keys] == [1, 2, 3, 4, 5, 6] and pages == 3
    with Session(hub.engine) as session:  # queued: the job runner is not started
        for i in range(3):
            hub.jobs.submit(session, name=f"job-{i}", request=TrainingRequest(name=f"job-{i}"))
    jobs, _ = _walk(api, "/api/v1/training-jobs", limit=2)
    assert [j["name"] for j in jobs] == ["job-2", "job-1", "job-0"]
    assert _walk(api, "/api/v1/rollouts", limit=1) == ([], 1)


@pytest.mark.parametrize(("path", "maximum"), [
    ("/api/v1/devices", 1000), ("/api/v1/telemetry?device_id=d", 100_000),
    ("/api/v1/telemetry/summary", 10_000), ("/api/v1/anomalies", 10_000),
    ("/api/v1/dead-letters", 1000), ("/api/v1/models", 1000),
    ("/api/v1/training-jobs", 1000), ("/api/v1/rollouts", 1000), ("/api/v1/api-keys", 1000),
    ("/api/v1/webhooks", 1000), ("/api/v1/webhooks/deliveries", 1000),
    ("/api/v1/incidents", 1000),
])
def test_limits_are_bounded_and_bad_cursors_refused(
    api: httpx.Client, path: str, maximum: int
) -> None:
    sep = "&" if "?" in path else "?"
    assert api.get(f"{path}{sep}limit={maximum}", headers=ADMIN).status_code == 200
    response = api.get(f"{path}{sep}limit={maximum + 1}", headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]
    for cursor in ("not-base64-json", "WzEsMiwzLDQsNV0", "eyJ0cyI6MX0"):  # junk, [1..5], {"ts":1}
        response = api.get(f"{path}{sep}cursor={cursor}", headers=ADMIN)
        assert response.status_code == 422, (cursor, response.text)
        assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_every_list_route_takes_a_bounded_limit_and_a_cursor(hub: Hub) -> None:
    """From the OpenAPI schema, so that a list route added later is held to the same rule."""
    schema = create_app(hub).openapi()
    lists = []
    for path, item in schema["paths"].items():
        get = item.get("get")
        content = (get or {}).get("responses", {}).get("200", {}).get("content", {})
        if content.get("application/json", {}).get("schema", {}).get("type") != "array":
            continue
        lists.append(path)
        params = {p["name"]: p for p in get.get("parameters", [])}
        assert "cursor" in params, f"{path} returns a list but takes no cursor"
        limit = params.get("limit", {}).get("schema", {})
        assert "maximum" in limit, f"{path} returns a list without a bounded limit"
        assert NEXT_CURSOR_HEADER in get["responses"]["200"].get("headers", {}), path
    assert "/api/v1/devices" in lists and len(lists) >= 10
