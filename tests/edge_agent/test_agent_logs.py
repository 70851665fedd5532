"""What the agent tells its operator: a session taken over by a second agent with the same id
(named once, shown by `edge-agent status`), no pinned key at start-up, no runtime chatter on
stderr, and readable times."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main as agent_cli
from edge_agent.comms.mqtt import LinkSettings, MqttLink
from edge_agent.inference.runtime_stderr import quiet_runtime_stderr
from shared.timefmt import iso_time
from simulator.broker import Broker
from tests.edge_agent.support import FIXTURES, ScriptedSource, agent_config, wait_until

TAKEOVER = "session taken over"


@pytest.mark.integration
def test_two_agents_with_one_device_id_name_the_takeover_once_and_status_shows_it(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge_agent.comms.mqtt")
    agents = [Agent(agent_config(broker, tmp_path / f"state-{i}", "twin", None),
                    source=ScriptedSource(10**9, rate_hz=20.0)) for i in range(2)]
    for agent in agents:
        agent.start()
    try:
        wait_until(lambda: all(a.status()["session_takeovers"] >= 4 for a in agents), 60,
                   "both agents to be taken over again and again")
        conflicts = [a.status()["session_conflict"] for a in agents]
        assert all(c and TAKEOVER in c and "'twin'" in c for c in conflicts), conflicts
        assert all(TAKEOVER in a.status()["last_error"] for a in agents)
    finally:
        for agent in agents:
            agent.stop(timeout=2)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and TAKEOVER in r.getMessage()]
    assert len(warnings) == 2, warnings  # once per agent, however often it flapped

    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "twin"\nstate_dir = "{tmp_path / "state-0"}"\n')
    capsys.readouterr()
    assert agent_cli(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    conflict_line = next(ln for ln in out.splitlines() if ln.startswith("WARNING"))
    assert TAKEOVER in conflict_line and "take-overs" in conflict_line
    error_line = next(ln for ln in out.splitlines() if ln.startswith("last error"))
    assert error_line.split()[2].endswith("Z"), error_line  # an ISO time, then the text


@pytest.mark.integration
def test_a_broker_restarting_twice_in_a_row_is_not_taken_for_a_takeover(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    login = broker.agent_mqtt(broker.add_device("solo"))
    login.pop("topic_prefix")
    link = MqttLink(LinkSettings(client_id="solo", **login, reconnect_initial_s=0.2,
                                 reconnect_max_s=0.5))
    link.start()
    try:
        wait_until(lambda: link.connected, 10, "connected")
        for _ in range(2):  # each connection lost within seconds of being made
            broker.kill()
            wait_until(lambda: "failed" in (link.last_error or ""), 10, "a failed reconnect")
            broker.start()
            wait_until(lambda: link.connected, 10, "connected again")
        assert link.takeovers == 0 and link.session_conflict is None
        assert not [r for r in caplog.records if TAKEOVER in r.getMessage()]
    finally:
        link.stop()


@pytest.mark.integration
def test_run_without_a_pinned_key_warns_at_start(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent")
    agent = Agent(agent_config(broker, tmp_path / "state", "no-keys", None),
                  source=ScriptedSource(10, rate_hz=0.0))
    agent.start()
    agent.stop(timeout=2)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING
              and "no pinned signing key" in r.getMessage()]
    assert len(warned) == 1


def test_the_runtime_does_not_announce_its_delegate_on_stderr() -> None:
    code = ("import numpy as np; from edge_agent.inference.runtime import TfliteModel; "
            f"m = TfliteModel(open({str(FIXTURES / 'ae_int8_w8c2.tflite')!r}, 'rb').read()); "
            "m.reconstruct(np.zeros(16)); print('loaded')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"loaded\n"
    assert b"XNNPACK" not in done.stderr, done.stderr


def test_other_stderr_output_while_a_model_loads_is_passed_on(
    capfd: pytest.CaptureFixture[str]
) -> None:
    with quiet_runtime_stderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: something the runtime really wants to say\n")
    assert capfd.readouterr().err == "ERROR: something the runtime really wants to say\n"


def test_log_times_are_iso() -> None:
    assert iso_time(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert iso_time(1.9996) == "1970-01-01T00:00:02.000Z"
