"""The README's by-hand path, run from the README's own commands: broker, hub, agent, admin CLI.

The block after the ``<!-- by-hand path: ... -->`` marker in README.md is parsed (comments and
blank lines dropped, ``\\`` continuations joined, ``VAR=value`` prefixes taken as environment)
and every command runs as a subprocess, in order. Long-running commands (the broker, the hub,
the agent: see ``DAEMONS``) are started in the background and waited for; every other command
must exit 0. The loop is checked at the end: the hub stores the agent's readings, and the
README's CLI command lists the device.

Substitution rule (the only changes made to the commands):
- ports: the README's 1883 (broker) and 8080 (hub), and 8883 (a TLS broker) if it appears,
  become free ports wherever the number appears in a command; the defaults that name those
  ports are set to the same substitutes through their documented environment variables
  (``EDGELOOP_MQTT_PORT`` and ``EDGELOOP_HTTP_PORT`` of the hub, ``EDGELOOP_HUB_URL`` of the
  admin CLI);
- folders: the commands run in a new temporary folder instead of the repository (so
  ``agent.toml``, the agent's state and ``hub-data`` land there); ``.venv/bin/X`` is the ``X``
  beside this interpreter, and ``../shared/`` is the reference material beside the repository
  (``EDGELOOP_REFERENCE_DIR`` when set). Nothing else is changed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from simulator.ports import free_port
from simulator.process import start_child
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- by-hand path:"
PORTS = (1883, 8883, 8080)
BIN = Path(sys.executable).parent


@dataclass
class Command:
    env: dict[str, str]
    argv: list[str]
    text: str

    @property
    def name(self) -> tuple[str, ...]:
        return (Path(self.argv[0]).name, *self.argv[1:3])


@dataclass
class Run:
    """Substitutes and the processes started so far."""

    cwd: Path
    ports: dict[int, int]
    reference: Path
    daemons: list[tuple[Command, subprocess.Popen[bytes], Path]] = field(default_factory=list)


def readme_commands() -> list[Command]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(MARKER)
    block = re.search(r"```[^\n]*\n(.*?)\n```", text[start:], re.DOTALL)
    assert block is not None, "no code block after the by-hand marker"
    joined = block.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        env = {}
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        commands.append(Command(env=env, argv=words, text=line.strip()))
    return commands


def _substitute(word: str, run: Run) -> str:
    if word.startswith(".venv/bin/"):
        return str(BIN / word.removeprefix(".venv/bin/"))
    if word.startswith("../shared/"):
        return str(run.reference / word.removeprefix("../shared/"))
    for readme_port, port in run.ports.items():
        word = re.sub(rf"(?<!\d){readme_port}(?!\d)", str(port), word)
    return word


def _prepared(command: Command, run: Run) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "EDGELOOP_MQTT_PORT": str(run.ports[1883]),
           "EDGELOOP_HTTP_PORT": str(run.ports[8080]),
           "EDGELOOP_HUB_URL": f"http://127.0.0.1:{run.ports[8080]}"}
    env.update({k: _substitute(v, run) for k, v in command.env.items()})
    return [_substitute(w, run) for w in command.argv], env


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _hub_healthy(run: Run) -> bool:
    try:
        body = httpx.get(f"http://127.0.0.1:{run.ports[8080]}/api/v1/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return bool(body.get("mqtt_connected"))


def _started(_run: Run) -> bool:
    return True


# Long-running commands and when they are ready for the next command.
DAEMONS: dict[tuple[str, ...], Callable[[Run], bool]] = {
    ("simulator", "broker"): lambda run: _port_open(run.ports[1883]),
    ("cloud-hub", "broker", "run"): lambda run: _port_open(run.ports[8883]),
    ("cloud-hub", "serve"): _hub_healthy,
    ("edge-agent", "run"): _started,
}


def _daemon_ready(command: Command) -> Callable[[Run], bool] | None:
    for key, ready in DAEMONS.items():
        if command.name[: len(key)] == key:
            return ready
    return None


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    reference = Path(os.environ.get("EDGELOOP_REFERENCE_DIR", REPO.parent / "shared"))
    if not (reference / "data").is_dir():
        pytest.skip(f"the reference data the README reads is not at {reference}/data")
    state = Run(cwd=tmp_path / "by-hand", ports={p: free_port() for p in PORTS},
                reference=reference)
    state.cwd.mkdir()
    try:
        yield state
    finally:
        for _command, proc, _log in reversed(state.daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def test_the_readme_by_hand_path_runs_as_written(run: Run) -> None:
    commands = readme_commands()
    names = [c.name[:2] for c in commands]
    assert ("cloud-hub", "serve") in names and ("edge-agent", "run") in names, names
    device = next(c.argv[c.argv.index("--device") + 1] if "--device" in c.argv else c.argv[3]
                  for c in commands if "--device" in c.argv
                  or c.name[:3] == ("cloud-hub", "devices", "enroll"))
    admin_key = next(c.env["EDGELOOP_ADMIN_API_KEY"] for c in commands
                     if "EDGELOOP_ADMIN_API_KEY" in c.env)
    last = commands[-1]
    for command in commands:
        argv, env = _prepared(command, run)
        ready = _daemon_ready(command)
        if ready is None:
            if command is last:
                break  # the loop's check below runs it
            done = subprocess.run(argv, env=env, cwd=run.cwd, capture_output=True, timeout=120,
                                  check=False)
            assert done.returncode == 0, (
                f"`{command.text}` exited {done.returncode}:\n{done.stdout.decode()}\n"
                f"{done.stderr.decode()}")
            continue
        log = run.cwd / f"daemon-{len(run.daemons)}.log"
        with log.open("wb") as out:
            proc = start_child(argv, env=env, cwd=run.cwd, stdout=out, stderr=subprocess.STDOUT)
        run.daemons.append((command, proc, log))

        def up(proc: subprocess.Popen[bytes] = proc, log: Path = log,
               ready: Callable[[Run], bool] = ready, text: str = command.text) -> bool:
            if proc.poll() is not None:
                pytest.fail(f"`{text}` exited {proc.returncode}:\n{_log_tail(log)}")
            return ready(run)

        wait_for(up, 120, f"`{command.text}` to be ready")

    # The loop: the hub stores the agent's readings, and the README's CLI lists the device.
    hub = f"http://127.0.0.1:{run.ports[8080]}/api/v1"

    def stored() -> int:
        devices = httpx.get(f"{hub}/devices", headers={"X-API-Key": admin_key}, timeout=5).json()
        return sum(d["telemetry_readings"] for d in devices if d["device_id"] == device)

    wait_for(lambda: stored() >= 3, 90, f"readings of {device} stored by the hub")
    argv, env = _prepared(last, run)
    done = subprocess.run(argv, env=env, cwd=run.cwd, capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert device in done.stdout.decode(), done.stdout.decode()

    agent = next(proc for command, proc, _ in run.daemons if command.name[:2] == (
        "edge-agent", "run"))
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=60) == 0  # the fixture stops the other daemons


def test_the_readme_block_is_found_and_parsed() -> None:
    commands = readme_commands()
    assert commands, "the by-hand block has no commands"
    assert all(Path(c.argv[0]).name in {"simulator", "cloud-hub", "edge-agent", "curl"}
               or c.argv[0].startswith(".venv/bin/") for c in commands)
