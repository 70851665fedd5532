"""Run ``cloud-hub serve`` as a child process with its own data directory, ports and admin key.

The simulator drives the hub only through its REST API and MQTT, exactly as an operator would;
running it as a separate process also keeps TensorFlow out of the simulator's own process.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from simulator.ports import free_port
from simulator.process import log_tail, start_child, terminate

__all__ = ["HubProcess", "HubProcessError"]

log = logging.getLogger(__name__)


class HubProcessError(RuntimeError):
    """The hub did not start, or died; the message carries the end of its log."""


def _hub_command() -> list[str]:
    script = Path(sys.executable).with_name("cloud-hub")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-c", "import sys; from cloud_hub.cli import main; sys.exit(main())",
            "serve"]


class HubProcess:
    """``cloud-hub serve`` on a free HTTP port, talking to the broker at ``mqtt_port``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        mqtt_port: int,
        mqtt_host: str = "127.0.0.1",
        http_port: int | None = None,
        admin_api_key: str | None = None,
        topic_prefix: str = "edgeloop/v1",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.http_port = http_port or free_port()
        # Shaped like the hub's own keys ("el_..."): a bare token_urlsafe starts with "-" one
        # time in 64, which a command line then reads as an option (edge-agent init --api-key).
        self.admin_api_key = admin_api_key or "el_" + secrets.token_urlsafe(24)
        self.log_path = data_dir / "hub.log"
        self._env = {
            "EDGELOOP_DATA_DIR": str(data_dir),
            "EDGELOOP_MQTT_HOST": mqtt_host,
            "EDGELOOP_MQTT_PORT": str(mqtt_port),
            "EDGELOOP_HTTP_HOST": "127.0.0.1",
            "EDGELOOP_HTTP_PORT": str(self.http_port),
            "EDGELOOP_ADMIN_API_KEY": self.admin_api_key,
            "EDGELOOP_TOPIC_PREFIX": topic_prefix,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **(extra_env or {}),
        }
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 120.0, *, mqtt: bool = True) -> HubProcess:
        """Start and wait until ``GET /api/v1/health`` answers: with MQTT connected (``status``
        ok), or, with ``mqtt=False``, serving its API whatever the broker does (a hub whose
        broker is down starts and says ``degraded``)."""
        self.launch()
        return self.wait_healthy(timeout, mqtt=mqtt)

    def launch(self) -> HubProcess:
        """Start the process and return at once."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self._env}
        with self.log_path.open("ab") as log_fh:
            self._proc = start_child(  # stops when this process dies, however it dies
                _hub_command(), env=env, stdout=log_fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def wait_healthy(self, timeout: float, *, mqtt: bool = True) -> HubProcess:
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise HubProcessError(
                        f"cloud-hub serve exited with {self._proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    body = http.get(f"{self.url}/api/v1/health").json()
                    if body.get("status") == "ok" and body.get("mqtt_connected") or (
                            not mqtt and body.get("status") in ("ok", "degraded")):
                        log.info("hub healthy at %s", self.url)
                        return self
                    last = str(body)
                except (httpx.HTTPError, ValueError) as exc:
                    last = str(exc)
                time.sleep(0.2)
        self.stop()
        raise HubProcessError(
            f"hub at {self.url} not healthy within {timeout}s (last: {last}):\n{self.log_tail()}"
        )

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end by itself; its exit code (HubProcessError if it runs on)."""
        assert self._proc is not None, "launch() first"
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HubProcessError(f"cloud-hub serve still runs after {timeout}s:\n"
                                  f"{self.log_tail()}") from None
        self._proc = None
        return code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (as systemd would), wait, SIGKILL if it must; returns the exit code."""
        if self._proc is None:
            return None
        proc, self._proc = self._proc, None
        return terminate(proc, timeout, "hub")

    def log_tail(self, n: int = 30) -> str:
        return log_tail(self.log_path, n)

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
