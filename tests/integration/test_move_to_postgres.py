"""A hub moved from SQLite to PostgreSQL as docs/scaling.md says: stopped, its database copied
with ``cloud-hub db copy``, started on PostgreSQL. Real agents stream throughout and buffer
while the hub is down; every reading they generated is stored exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from tests.integration.support import assert_stored_once, stored_readings, wait_for
from tests.pg import pg_database

pytestmark = [pytest.mark.integration, pytest.mark.hub, pytest.mark.postgres]
__all__ = ["pg_database"]


def _db_copy(data_dir: Path, target: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGELOOP_DATA_DIR": str(data_dir), "EDGELOOP_DATABASE_URL": target}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from cloud_hub.cli import main; sys.exit(main())",
         "--json", "db", "copy", "--from", str(data_dir / "hub.db")],
        env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_hub_moved_from_sqlite_to_postgresql_goes_on_with_every_reading_stored_once(
    broker: Broker, pg_database: str, tmp_path: Path,
) -> None:
    data_dir, key = tmp_path / "hub", "move-admin-key-0123456789"
    on_sqlite = HubProcess(data_dir, mqtt_port=broker.port, admin_api_key=key,
                           extra_env=broker.hub_env("edgeloop-hub")).start(timeout=120)
    client = HubClient(on_sqlite.url, key)
    agents = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
                   mqtt_auth=hub_enrollment(client, tmp_path / "bundles"),
                   state_root=tmp_path / "agents", trust_keys={})
    for i in range(3):
        agents.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", seed=i, rate_hz=20.0))
    on_postgres = HubProcess(data_dir, mqtt_port=broker.port, admin_api_key=key,
                             http_port=on_sqlite.http_port,
                             extra_env={**broker.hub_env("edgeloop-hub"),
                                        "EDGELOOP_DATABASE_URL": pg_database})
    agents.start()
    try:
        wait_for(lambda: all(stored_readings(client).get(d, 0) > 40 for d in agents.devices), 60,
                 "telemetry stored on SQLite")
        on_sqlite.stop()  # as an operator stops it: SIGTERM, leases given up
        wait_for(lambda: all(s["outbox_depth"] >= 2 for s in agents.statuses().values()), 30,
                 "agents buffering while the hub is down")

        copied = _db_copy(data_dir, pg_database)
        assert copied.returncode == 0, copied.stderr
        rows = {r["table"]: r["rows"] for r in json.loads(copied.stdout)}
        assert rows["devices"] == 3 and rows["telemetry"] > 0 and rows["enrollments"] == 3

        on_postgres.start(timeout=120)
        mark = stored_readings(client)
        wait_for(lambda: all(stored_readings(client)[d] > mark[d] + 40 for d in agents.devices), 90,
                 "telemetry flowing into PostgreSQL")
    finally:
        agents.stop()
        on_sqlite.stop()
    try:
        assert_stored_once(client, agents.samples_generated(), pg_database)
    finally:
        on_postgres.stop()
        client.close()
