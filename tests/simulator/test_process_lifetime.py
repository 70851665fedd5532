"""The harness's children (broker, hub) do not outlive the process that started them: a test
run killed by a CI timeout or a SIGKILL leaves no broker or hub behind holding its ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from simulator.process import start_child

REPO = Path(__file__).resolve().parents[2]

# A stand-in for a test process: a secure broker and a hub on it, as the fixtures make them.
_RUN = """
import json, sys, time
from pathlib import Path
from simulator.broker import Broker
from simulator.hub_process import HubProcess

broker = Broker().start()
hub = HubProcess(Path(sys.argv[1]), mqtt_port=broker.port,
                 extra_env=broker.hub_env("lifetime-hub")).start(timeout=120)
print(json.dumps({"broker": [broker.pid, broker.port], "hub": [hub.pid, hub.http_port]}),
      flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)  # polling other processes


@pytest.mark.integration
def test_a_sigkilled_test_process_leaves_no_broker_or_hub_running(tmp_path: Path) -> None:
    errors = tmp_path / "run.err"
    children: dict[str, list[int]] = {}
    with errors.open("w") as err, subprocess.Popen(
            [sys.executable, "-c", _RUN, str(tmp_path / "hub")], cwd=REPO,
            stdout=subprocess.PIPE, stderr=err, text=True) as run:
        try:
            assert run.stdout is not None
            line = run.stdout.readline()
            assert line, f"the stand-in run failed: {errors.read_text()[-2000:]}"
            children = json.loads(line)
            assert not any(_gone(pid) for pid, _port in children.values())
            assert all(_listening(port) for _pid, port in children.values())
            run.kill()
            run.wait(10)
            for name, (pid, port) in children.items():
                _wait(lambda pid=pid: _gone(pid), 60, f"the {name} (pid {pid}) to stop")
                assert not _listening(port), f"the {name}'s port {port} is still held"
        finally:
            if run.poll() is None:
                run.kill()
            for pid, _port in children.values():  # not left behind when the test fails
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)


def test_a_child_started_from_a_thread_outlives_the_thread(tmp_path: Path) -> None:
    # The kernel signals a child when the *thread* that forked it ends: a broker started from a
    # short-lived thread (a fixture's helper, a fleet's starter) must not die with that thread.
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: started.append(start_child(["sleep", "30"])))
    thread.start()
    thread.join(10)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            started[0].wait(1.0)  # a child killed with its thread would end at once
    finally:
        started[0].kill()
        started[0].wait(10)
