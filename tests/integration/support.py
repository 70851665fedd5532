"""Helpers shared by the integration tests."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from cloud_hub.cli.client import HubClient

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)  # polling another process (REST API, broker)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def stored_readings(client: HubClient) -> dict[str, int]:
    """Readings the hub has stored, per device (``GET /telemetry/summary``)."""
    return {r["device_id"]: r["readings"] for r in client.get_all("/telemetry/summary")}


def assert_stored_once(client: HubClient, generated: dict[str, int], database_url: str) -> None:
    """Every reading the agents generated is stored, none twice: the hub's counts, the
    timestamps it serves (strictly increasing), and the database's rows and device counters."""
    def complete() -> dict[str, int] | None:
        s = stored_readings(client)
        return s if all(s.get(d, 0) >= n for d, n in generated.items()) else None

    stored = wait_for(complete, 120, "every generated reading stored")
    assert stored == generated, {d: (stored.get(d), n) for d, n in generated.items()}
    for device_id, n in generated.items():  # exactly once: no timestamp twice
        ts = np.asarray(client.get_telemetry(device_id)["ts"])
        assert len(ts) == n and np.all(np.diff(ts) > 0), device_id
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = dict(conn.execute(text(
                "SELECT device_id, sum(readings) FROM telemetry GROUP BY device_id")).all())
            counted = dict(conn.execute(text(
                "SELECT device_id, telemetry_readings FROM devices")).all())
    finally:
        engine.dispose()
    assert {d: int(n) for d, n in rows.items()} == generated
    assert {d: counted[d] for d in generated} == generated, "device counters off"


# a training spec that runs until it is cancelled (1,000 epochs, no early stop)
LONG_TRAINING = '{"window": 8, "epochs": 1000, "patience": 0, "compare_modes": false}'


def training_csv(rows: int = 600) -> bytes:
    """A small two-channel CSV to train on (``POST /training-jobs/csv``)."""
    lines = ["ts,a,b"] + [f"{1000 + i},{math.sin(i / 5):.4f},{math.cos(i / 7):.4f}"
                          for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def start_training(client: HubClient, name: str, spec: str) -> int:
    """A training job on ``training_csv``, through the API; its id."""
    job = client.request("POST", "/training-jobs/csv", params={"name": name, "spec": spec},
                         content=training_csv(), headers={"Content-Type": "text/csv"})
    return int(job["id"])
