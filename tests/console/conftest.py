"""The console in a real browser: Debian's chromium driven by Playwright (from PyPI), against a
real hub (in-process, real SQLite) on a private mosquitto with real edge agents.

Playwright's own browser download is never used: the tests point it at ``/usr/bin/chromium``
(``make test`` installs the Debian package when it is missing), or at ``EDGELOOP_CHROMIUM``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from cloud_hub.cli.serve import ServerHandle, serve_in_thread
from cloud_hub.core.security import generate_api_key, hash_api_key
from cloud_hub.db.tables import ApiKey
from cloud_hub.registry.lifecycle import publish_model
from cloud_hub.service import Hub
from simulator.broker import Broker, BrokerError, find_mosquitto
from simulator.fleet import DeviceSpec, Fleet
from simulator.profiles import PROFILES
from tests.cloud_hub.conftest import ADMIN_KEY, hub_settings
from tests.cloud_hub.helpers import enroll_devices, stand_in_training, tiny_artifact, wait_for

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--disable-dev-shm-usage"]
DEVICES = ["pump-001", "pump-002", "pump-003"]
# Devices the tests send as through a gateway connection (not agents).
OTHER_DEVICES = ("fan-7", "evil-1")
PUMP_CHANNELS = tuple(PROFILES["pump"].channel_names)


def chromium_path() -> str:
    path = os.environ.get("EDGELOOP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("the console tests need Debian's chromium (apt-get install chromium; "
                    "`make test` installs it)")
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS,
                              headless=True)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Console:
    """A running hub with a small fleet, and what the tests need to reach it."""

    hub: Hub
    server: ServerHandle
    fleet: Fleet
    broker: Broker
    read_key: str
    quiet: tuple[str, int]
    noisy: tuple[str, int]
    problems: list[str] = field(default_factory=list)  # console errors seen in any page

    @property
    def url(self) -> str:
        return self.server.base_url


def _read_key(hub: Hub) -> str:
    key = generate_api_key()
    with Session(hub.engine) as session:
        session.add(ApiKey(name="night-shift", key_hash=hash_api_key(key), prefix=key[:8],
                           scope="read", created_at=time.time()))
        session.commit()
    return key


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    try:
        find_mosquitto()
    except BrokerError as exc:
        pytest.fail(f"the console tests need mosquitto: {exc}")
    tmp = tmp_path_factory.mktemp("console")
    broker = Broker()
    broker.start()
    hub = Hub(hub_settings(broker, tmp / "hub", incident_tick_s=0.2, incident_quiet_s=3600.0,
                           hub_report_s=0.5),
              run_training=stand_in_training())
    # Enrolled in the hub's registry; the agents log in with broker credentials of their own.
    enroll_devices(hub, (*DEVICES, *OTHER_DEVICES))
    hub.start()
    server = serve_in_thread(hub)
    fleet = Fleet(mqtt_host=broker.host, mqtt_port=broker.port, state_root=tmp / "agents",
                  trust_keys={hub.signing_key.key_id: hub.signing_key.public_b64()},
                  mqtt_auth=broker.device_auth)
    try:
        for i, device_id in enumerate(DEVICES):
            fleet.add(DeviceSpec(device_id=device_id, seed=i, rate_hz=10.0))
        fleet.start()
        # Two real TFLite models over the pump's eight channels: one that never fires (its
        # threshold is far above any score) and one that flags every window.
        quiet = hub.register(tiny_artifact(channels=PUMP_CHANNELS, threshold=1e30),
                             name="pump-ae")
        noisy = hub.register(tiny_artifact(channels=PUMP_CHANNELS, threshold=1e-9),
                             name="pump-ae")
        with Session(hub.engine) as session:
            for name, version in (quiet, noisy):
                publish_model(session, name=name, version=version, releases=hub.releases)
        wait_for(lambda: hub.ingest.snapshot()["telemetry_batches"] >= 3 * len(DEVICES),
                 timeout=30, what="telemetry from every agent")
        yield Console(hub, server, fleet, broker, _read_key(hub), quiet, noisy)
    finally:
        fleet.stop(timeout=10)
        server.stop()
        broker.close()


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    """A fresh browser context (no cookies); console errors and page errors are collected and
    must stay empty: a CSP violation or a script error fails the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    p = context.new_page()
    problems: list[str] = []
    p.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
         if m.type == "error" else None)
    p.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    p.set_default_timeout(15_000)
    try:
        yield p
    finally:
        context.close()
    # Refusals the tests provoke on purpose (403, 422) are logged as failed resource loads.
    real = [x for x in problems if not re.search(r"status of 4(03|09|22)", x)]
    assert not real, "\n".join(real)


def log_in(page: Any, console: Console, key: str = ADMIN_KEY, path: str = "/ui/fleet") -> None:
    page.goto(console.url + path)
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}*")
