"""`edge-agent run` as a real process: SIGTERM, SIGHUP, systemd notifications, SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_agent.telemetry.outbox import Outbox
from shared.topics import TopicAccess
from simulator.broker import Broker
from simulator.process import start_child
from tests.edge_agent.support import TOPICS, Collector, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _csv(path: Path, rows: int) -> Path:
    path.write_text("timestamp,a,b\n" + "".join(
        f"{1000 + i},{i % 7 * 0.1:.1f},{i % 5 * 0.2:.1f}\n" for i in range(rows)))
    return path


def _config(tmp_path: Path, broker: Broker, device_id: str, csv: Path, *,
            replay_speed: float = 0.0, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
device_id = "{device_id}"
state_dir = "state"
[mqtt]
{broker.agent_mqtt_toml(broker.add_device(device_id))}reconnect_initial_s = 0.2
reconnect_max_s = 1.0
[source]
type = "csv"
[source.options]
path = "{csv}"
replay_speed = {replay_speed}
timestamps = "file"
[telemetry]
batch_max_readings = 25
batch_max_age_s = 0.2
[heartbeat]
interval_s = 1.0
[daemon]
grace_s = 5.0
{extra}
""")
    return path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _spawn(config: Path, processes: list[subprocess.Popen[str]],
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the agent; its output goes to agent-<n>.log beside the config."""
    log_path = config.parent / f"agent-{len(processes)}.log"
    with log_path.open("w") as log_file:
        proc = start_child(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )
    processes.append(proc)
    return proc


def _output(config: Path, n: int = 0) -> str:
    return (config.parent / f"agent-{n}.log").read_text()


def _retained_status(broker: Broker, device_id: str) -> dict[str, object]:
    got: list[bytes] = []
    observer = TopicAccess(publish=(), subscribe=(TOPICS.status(device_id),))
    client = broker.client(broker.add_client(f"status-of-{device_id}", observer),
                           protocol=paho.MQTTv311)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.connect(broker.host, broker.port)
    client.subscribe(TOPICS.status(device_id), qos=1)
    client.loop_start()
    try:
        wait_until(lambda: got, 10, "retained status")
    finally:
        client.loop_stop()
        client.disconnect()
    return dict(json.loads(got[-1]))


def _status_file(tmp_path: Path) -> dict[str, object]:
    try:
        return dict(json.loads((tmp_path / "state" / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_flushes_publishes_offline_and_exits_0(
    broker: Broker, collector: Collector, tmp_path: Path,
    processes: list[subprocess.Popen[str]], stop_signal: signal.Signals,
) -> None:
    csv = _csv(tmp_path / "data.csv", 300)
    proc = _spawn(_config(tmp_path, broker, "dev-t", csv, replay_speed=100.0), processes)
    wait_until(lambda: collector.device("dev-t").readings() > 0, 20, "streaming")
    wait_until(lambda: any(s["state"] == "online" for s in collector.device("dev-t").status),
               10, "online published")
    proc.send_signal(stop_signal)
    assert proc.wait(timeout=15) == 0, _output(tmp_path / "agent.toml")
    status = _retained_status(broker, "dev-t")
    assert status["state"] == "offline"
    readings = collector.device("dev-t").readings()
    assert readings > 0
    snapshot = Outbox.inspect(tmp_path / "state" / "outbox.db")
    assert snapshot.depth == 0, "everything accepted was flushed before exit"


def test_sighup_refuses_a_bad_config_and_keeps_running_then_applies_a_good_one(
    broker: Broker, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    csv = _csv(tmp_path / "data.csv", 100_000)
    config = _config(tmp_path, broker, "dev-h", csv, replay_speed=50.0)
    good_text = config.read_text()
    proc = _spawn(config, processes)
    wait_until(lambda: _status_file(tmp_path).get("connected"), 20, "agent running")
    config.write_text(good_text + "\n[bogus]\nkey = 1\n")
    proc.send_signal(signal.SIGHUP)
    before = int(_status_file(tmp_path).get("readings", 0))  # type: ignore[call-overload]
    wait_until(lambda: int(_status_file(tmp_path).get("readings", 0))  # type: ignore[call-overload]
               > before + 100, 20, "still reading after the refused reload")
    assert proc.poll() is None
    config.write_text(good_text.replace("[daemon]", "[log]\njson = true\n[daemon]"))
    proc.send_signal(signal.SIGHUP)

    def json_lines() -> list[str]:
        return [line for line in _output(config).splitlines() if line.startswith("{")]

    wait_until(json_lines, 20, "the good config (JSON logs) applied")
    assert all("level" in json.loads(line) for line in json_lines())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    output = _output(config)
    assert "new config refused" in output and "unknown key 'bogus'" in output


def test_systemd_gets_ready_watchdog_and_stopping(
    broker: Broker, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.5)
    csv = _csv(tmp_path / "data.csv", 100_000)
    proc = _spawn(_config(tmp_path, broker, "dev-n", csv, replay_speed=10.0), processes,
                  env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    seen: list[str] = []

    def received(*wanted: str) -> bool:
        try:
            seen.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            pass
        return all(w in seen for w in wanted)

    try:
        wait_until(lambda: received("READY=1", "WATCHDOG=1"), 20, "READY and WATCHDOG")
        watchdogs = seen.count("WATCHDOG=1")
        wait_until(lambda: received() and seen.count("WATCHDOG=1") > watchdogs, 10,
                   "repeated keep-alives")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: received("STOPPING=1"), 10, "STOPPING")
        assert proc.wait(timeout=15) == 0
    finally:
        sock.close()


def test_the_running_daemon_keeps_one_malloc_arena_and_says_so(
    broker: Broker, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    csv = _csv(tmp_path / "data.csv", 100_000)
    config = _config(tmp_path, broker, "dev-m", csv, replay_speed=50.0,
                     extra='[log]\nlevel = "INFO"')
    proc = _spawn(config, processes)
    line = re.compile(r"released [0-9.]+ MB of start-up pages \(model none; malloc arenas (\d+)\)")
    wait_until(lambda: line.search(_output(config)), 30, "the release of start-up pages")
    match = line.search(_output(config))
    assert match is not None
    # the reader, worker, sender and link threads have allocated by then; the operator's
    # MALLOC_ARENA_MAX would win over the daemon's cap of one
    assert int(match.group(1)) <= int(os.environ.get("MALLOC_ARENA_MAX", "1"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_agent_sigkilled_mid_stream_loses_nothing_it_accepted(
    broker: Broker, collector: Collector, tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    rows = 3000
    csv = _csv(tmp_path / "data.csv", rows)
    config = _config(tmp_path, broker, "dev-k", csv, replay_speed=500.0)
    proc = _spawn(config, processes)
    wait_until(lambda: collector.device("dev-k").readings() >= 300, 20, "streaming")
    proc.kill()
    proc.wait(10)
    accepted = Outbox.inspect(tmp_path / "state" / "outbox.db")
    accepted_batches = accepted.next_seq["dev-k/telemetry"]
    assert accepted_batches > 0
    restarted = _spawn(config, processes)  # the replay starts over: new readings, new seqs
    log = collector.device("dev-k")
    wait_until(lambda: len(log.telemetry) >= accepted_batches + 5, 30,
               "batches from before the kill and after the restart")
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=15) == 0
    seqs = sorted(log.telemetry)
    assert seqs == list(range(len(seqs))), "no batch accepted before the kill is missing"
    before_kill = [t for s in range(accepted_batches) for t in log.telemetry[s]["ts"]]
    assert before_kill == [1000.0 + i for i in range(len(before_kill))], \
        "the pre-kill readings arrived in order, each once"
    after = log.telemetry[accepted_batches]["ts"][0]
    assert after == 1000.0, "after the restart, seqs continue while the replay starts over"
