"""``cloud-hub serve``: the hub (MQTT ingest, publisher, jobs, rollouts) plus uvicorn."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn

from cloud_hub.cli.startup import (
    ClaimWatch,
    DataDirLock,
    StartRefused,
    bind_http,
    check_client_id,
)
from cloud_hub.core.config import Settings

if TYPE_CHECKING:  # the hub's modules load only once the checks have passed (they are slow)
    from cloud_hub.service import Hub

__all__ = ["ReadsAtDebug", "ServerHandle", "run_serve", "serve_in_thread", "settle_heap"]

log = logging.getLogger(__name__)


def run_serve(settings: Settings, log_level: str = "info") -> int:
    """Run until interrupted (SIGINT/SIGTERM stop uvicorn, then the hub); the exit status.

    Everything local is claimed before anything connects (:mod:`cloud_hub.cli.startup`): a
    second hub with the same settings stops here with the reason, and the running one is not
    disturbed."""
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire()
        sock = bind_http(settings.http_host, settings.http_port)
    except StartRefused as exc:
        lock.release()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        check_client_id(settings)
    except StartRefused as exc:
        sock.close()
        lock.release()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from cloud_hub.api.main import create_app
    from cloud_hub.db.migrate import SchemaTooNew
    from cloud_hub.service import Hub

    try:
        hub = Hub(settings)  # brings the database's schema to this code's (or refuses)
    except SchemaTooNew as exc:
        sock.close()
        lock.release()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hub.start()
    if hub.generated_admin_key:
        print(f"generated admin API key (shown once, store it): {hub.generated_admin_key}",
              flush=True)
    config = uvicorn.Config(create_app(hub), host=settings.http_host, port=settings.http_port,
                            log_level=log_level.lower())
    logging.getLogger("uvicorn.access").addFilter(ReadsAtDebug())
    server = _GracefulServer(config)
    lost: list[str] = []

    def yield_session(reason: str) -> None:
        lost.append(reason)
        log.error("%s", reason)
        server.should_exit = True

    watch = ClaimWatch(settings, hub.mqtt, yield_session)
    watch.start()
    log.info("REST API on http://%s:%d", settings.http_host, sock.getsockname()[1])
    settle_heap()
    try:
        server.run(sockets=[sock])
    finally:
        watch.stop()
        hub.stop(announce=not lost)
        sock.close()
        lock.release()
        log.info("hub stopped")
    if lost:
        print(f"error: {lost[0]}", file=sys.stderr)
        return 1
    return 0


def settle_heap() -> None:
    """Tune the cyclic garbage collector for a long-running ingest process.

    Everything loaded at start-up (FastAPI, SQLAlchemy, the app) is moved out of the
    collector's sight (``gc.freeze``), and young collections run every 50,000 allocations
    instead of 700. Ingest decodes thousands of short-lived lists a second (a telemetry row is
    one); with the defaults, the collector kept rescanning the batch in progress and, every few
    seconds, the whole heap: it cost about half of decoding (bench/ingest.py, issue 15).
    Reference counting still frees everything at once; only cycles wait a little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class ReadsAtDebug(logging.Filter):
    """uvicorn's access log: successful reads (the CLI, the console and scripts poll them
    several times a second) at DEBUG, so writes, errors and the hub's own lines stand out."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (isinstance(args, tuple) and len(args) == 5 and args[1] in ("GET", "HEAD")
                and isinstance(args[4], int) and args[4] < 400):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class _GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its shutdown, which would kill us before ``hub.stop()``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@dataclass
class ServerHandle:
    """A hub and its HTTP server running in this process (for the simulator and tests)."""

    hub: Hub
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        sockets = self.server.servers[0].sockets if self.server.servers else []
        port = sockets[0].getsockname()[1] if sockets else self.server.config.port
        return f"http://{self.server.config.host}:{port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.hub.stop(timeout)


def serve_in_thread(hub: Hub, *, host: str = "127.0.0.1", port: int = 0,
                    timeout: float = 10.0) -> ServerHandle:
    """Start ``hub`` (if not started) and serve its API on ``port`` (0 = a free one).

    The process's logging is left as it is (``log_config=None``): uvicorn's own configuration
    shuts down every handler the process has, and absl's (TensorFlow's) closes the stream it
    was made with when that is no longer ``sys.stderr``. Under pytest, whose capture swaps
    ``sys.stderr``, that closed the capture's stream and crashed the run (a test serving the
    API with ``capsys`` on, after one that imported TensorFlow, in the same worker)."""
    from cloud_hub.api.main import create_app

    if hub.started_at is None:
        hub.start(timeout)
    config = uvicorn.Config(create_app(hub), host=host, port=port, log_level="warning",
                            lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="hub-http", daemon=True)
    thread.start()
    started = threading.Event()

    def _poll() -> None:
        while not server.started and thread.is_alive():
            started.wait(0.01)
        started.set()

    threading.Thread(target=_poll, daemon=True).start()
    if not started.wait(timeout) or not server.started:
        server.should_exit = True
        hub.stop()
        raise RuntimeError(f"hub HTTP server did not start within {timeout}s")
    return ServerHandle(hub, server, thread)
