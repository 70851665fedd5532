"""Fixtures for hub tests: a started Hub on a private broker with a real SQLite file, devices
that follow it, the admin CLI run against its REST API with checks of what it answered, and
two hub processes' engines on one database (SQLite or PostgreSQL)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from cloud_hub.cli import main as cli_main
from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.core.config import Settings
from cloud_hub.db.tables import Device
from cloud_hub.service import Hub
from simulator.broker import Broker
from tests.cloud_hub.fleet import FakeDevice
from tests.cloud_hub.helpers import _row, enroll_devices, stand_in_training, wait_for
from tests.pg import hub_engines

ADMIN_KEY = "admin-key-for-tests-0123456789"


def hub_settings(broker: Broker, data_dir: Path, *, hub_id: str | None = None,
                 **extra: object) -> Settings:
    """A hub on ``broker`` (its identity created there: TLS and a password on a secure one)."""
    mqtt = broker.hub_settings(hub_id or f"hub-{broker.port}")
    return Settings(
        data_dir=data_dir, admin_api_key=ADMIN_KEY, ingest_batch_wait_s=0.02,
        publish_timeout_s=10.0, chunk_size=1024, rollout_tick_s=0.1,
        **{**mqtt, **extra},  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def served_hub(broker: Broker, data_dir: Path, devices: tuple[str, ...]) -> Iterator[Hub]:
    """A hub with ``devices`` enrolled, its REST API served on a free port and reachable as
    ``hub.test_api`` (an admin client on /api/v1); stopped on exit."""
    h = Hub(hub_settings(broker, data_dir), run_training=stand_in_training())
    enroll_devices(h, devices)
    server = serve_in_thread(h)
    h.test_api = httpx.Client(  # type: ignore[attr-defined]
        base_url=server.base_url + "/api/v1", headers={"X-API-Key": ADMIN_KEY}, timeout=30)
    try:
        yield h
    finally:
        h.test_api.close()  # type: ignore[attr-defined]
        server.stop()
        h.stop()


@contextlib.contextmanager
def started_hub(broker: Broker, data_dir: Path, **settings: object) -> Iterator[Hub]:
    """A started hub with the test devices enrolled, ``settings`` over :func:`hub_settings`'
    own; stopped on exit."""
    h = Hub(hub_settings(broker, data_dir, **settings), run_training=stand_in_training())
    enroll_devices(h)
    h.start()
    try:
        yield h
    finally:
        h.stop()


@contextlib.contextmanager
def api_client(hub: Hub, key: str | None = ADMIN_KEY) -> Iterator[httpx.Client]:
    """The hub's REST API served on a free port: a client on /api/v1 sending ``key`` (None:
    no key unless a request gives one)."""
    server = serve_in_thread(hub)
    headers = {"X-API-Key": key} if key is not None else {}
    try:
        with httpx.Client(base_url=server.base_url + "/api/v1", headers=headers,
                          timeout=30) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    with started_hub(broker, tmp_path / "hub") as h:
        yield h


@pytest.fixture
def server(hub: Hub) -> Iterator[ServerHandle]:
    """The ``hub`` fixture's REST API served on a free port, for the CLI."""
    handle = serve_in_thread(hub)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def fleet(broker: Broker, hub: Hub) -> Iterator[dict[str, FakeDevice]]:
    """pump-0 and pump-1 connected: they follow ``desired`` and report what they run."""
    devices = {d: FakeDevice(d, broker, hub.topics, hub.signing_key.key_id,
                             hub.signing_key.public_b64()) for d in ("pump-0", "pump-1")}
    try:
        wait_for(lambda: all(_row(hub, Device, d) for d in devices), 20, "the devices' rows")
        yield devices
    finally:
        for device in devices.values():
            device.close()


KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=KINDS)
def two_hubs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Engine]]:
    """Two hub processes' engines on one database (test_lease_fencing*.py)."""
    with hub_engines(request.param, tmp_path, 2) as engines:
        yield engines


def run_cli(server: ServerHandle, capsys: pytest.CaptureFixture[str], *args: str,
            key: str = ADMIN_KEY) -> tuple[int, str, str]:
    """``cloud-hub --url HUB --api-key KEY ARGS...`` against ``server``: its exit status,
    stdout and stderr, as a shell sees them (an argparse error or a ``SystemExit("...")``
    becomes its status, the message on stderr, as the interpreter would make it)."""
    try:
        code = cli_main(["--url", server.base_url, "--api-key", key, *args])
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            sys.stderr.write(f"{done.code}\n")
            code = 1
    out = capsys.readouterr()
    return code, out.out, out.err


Result = tuple[int, str, str]


def _refused(result: Result, *said: str) -> str:
    """A refusal as the CLI must give it: a non-zero exit, nothing on stdout, no traceback,
    and the reason (each of ``said``) on the last line of stderr (argparse puts its usage
    above it). Returns that line."""
    code, out, err = result
    assert code != 0, f"exit 0 for a refused command:\n{out}{err}"
    assert out == "", out
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines, "no reason given on stderr"
    reason = lines[-1]
    for text in said:
        assert text in reason, reason
    return reason


def _ok(result: Result) -> str:
    """The stdout of a command that must succeed (exit 0)."""
    code, out, err = result
    assert code == 0, f"exit {code}:\n{out}{err}"
    return out
