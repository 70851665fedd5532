"""Start a private mosquitto on a free loopback port with the repository's ``mosquitto.conf``.

Used by the demo, the fleet benchmark and the integration tests: none of them ever relies on a
broker that something else started. Standard library only, so the minimal edge venv can use it.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from simulator.process import log_tail, terminate

__all__ = ["Broker", "BrokerError", "find_mosquitto", "free_port", "repo_mosquitto_conf"]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """mosquitto could not be found or did not start."""


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def repo_mosquitto_conf() -> Path:
    here = Path(__file__).resolve().parent.parent / "mosquitto.conf"
    if not here.exists():
        raise BrokerError(f"mosquitto.conf not found next to the packages ({here})")
    return here


def _let_broker_write(folder: Path) -> None:
    """Started as root, mosquitto drops to the ``mosquitto`` user: it must own its folder,
    or every persistence save fails (and a restart loses queued and retained messages)."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    os.chown(folder, entry.pw_uid, entry.pw_gid)


def _persistence_dir() -> Path:
    # Its own folder directly under the system temp dir: a caller's ``workdir`` often sits in
    # a root-only (0700) temp folder that the ``mosquitto`` user cannot even enter, and then
    # every save fails with "Permission denied" and a restart comes back empty.
    folder = Path(tempfile.mkdtemp(prefix="edgeloop-mosquitto-db-"))
    _let_broker_write(folder)
    return folder


class Broker:
    """A mosquitto process; ``stop()`` and ``start()`` again keep the same port and persistence."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgeloop-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = _persistence_dir()
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_conf()

    def _write_conf(self) -> None:
        base = repo_mosquitto_conf().read_text()
        self.conf_path.write_text(
            f"listener {self.port} {self.host}\n"
            f"persistence_location {self.data_dir}/\n"
            + base
        )

    def start(self, timeout: float = 10.0) -> Broker:
        if self.running:
            return self
        log_fh = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf_path)],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    log.debug("mosquitto listening on %s:%d", self.host, self.port)
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, so persistence is saved)."""
        if self._proc is None:
            return
        terminate(self._proc, timeout, "mosquitto")
        self._proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def log_tail(self, n: int = 20) -> str:
        return log_tail(self.log_path, n)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
