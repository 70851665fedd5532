"""`edge-agent init --api-key` against a real secure hub: the device is enrolled through the
hub's REST API, and the agent.toml it writes (its own broker credential, TLS CA, pinned key)
connects to the secure broker and delivers readings the hub stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.cli.client import HubClient
from edge_agent.agent import Agent
from edge_agent.cli import main as agent_cli
from edge_agent.config import load_config
from simulator.hub_process import HubProcess
from tests.edge_agent.support import ScriptedSource
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]


def test_init_with_an_api_key_enrolls_and_the_agent_delivers(
    hub: HubProcess, client: HubClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dev-init" / "agent.toml"
    assert agent_cli(["init", "--hub", hub.url, "--device", "dev-init", "--channels", "a,b",
                      "--api-key", hub.admin_api_key, "-o", str(out)]) == 0, \
        capsys.readouterr().err
    config = load_config(out)
    assert config.mqtt.tls and config.mqtt.password, "the bundle's own broker credential"
    assert (out.parent / "ca.crt").exists()
    assert agent_cli(["check", "--config", str(out)]) == 0
    agent = Agent(config, source=ScriptedSource(200, rate_hz=100.0))
    agent.start()
    try:
        wait_for(lambda: any(d["device_id"] == "dev-init" and d["telemetry_readings"] >= 50
                             for d in client.get("/devices")), 60,
                 "readings of the device init enrolled")
    finally:
        agent.stop(timeout=5)
