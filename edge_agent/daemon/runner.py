"""``edge-agent run``: the agent as a long-running service.

SIGTERM/SIGINT: stop reading, flush within ``daemon.grace_s``, publish ``offline``, exit 0.
SIGHUP: read the config again; a bad one is refused (logged) and the agent keeps running on
the old one; a good one restarts the agent in-process with it. systemd gets ``READY=1`` and
watchdog keep-alives from the main loop, so a hung main loop gets the service restarted.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.daemon.logs import setup_logging
from edge_agent.daemon.memory import limit_malloc_arenas, malloc_arenas, release_startup_pages
from edge_agent.daemon.sdnotify import notify, watchdog_interval

__all__ = ["run"]

log = logging.getLogger(__name__)
# Start-up pages are released this long after the agent started or its active model changed
# (by then the first windows have been scored, so what scoring needs is mapped again at once).
_SETTLE_S = 3.0


class _Signals:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.wake = threading.Event()
        self.stop_signal: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signal.Signals(signum).name
        self.stop.set()
        self.wake.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload.set()
        self.wake.set()


def _reload(path: Path, current: AgentConfig, agent: Agent) -> tuple[AgentConfig, Agent]:
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("SIGHUP: new config refused, still running on the old one: %s", exc)
        return current, agent
    if new == current:
        log.info("SIGHUP: config unchanged")
        return current, agent
    notify("RELOADING=1")
    log.info("SIGHUP: applying the new config")
    agent.stop(timeout=current.daemon.grace_s)
    setup_logging(new.log.level, new.log.json_format)
    replacement = Agent(new)
    try:
        replacement.start()
    except Exception as exc:
        log.error("SIGHUP: the new config does not start (%s); back to the old one", exc)
        replacement = Agent(current)
        replacement.start()
        new = current
    notify("READY=1")
    return new, replacement


class _StartupPages:
    """Releases start-up pages once the agent has settled, and again after each model change."""

    def __init__(self) -> None:
        self._model: object = None
        self._agent: Agent | None = None
        self._due: float | None = None

    def tick(self, agent: Agent) -> None:
        now = time.monotonic()
        model = agent.detector.active
        if agent is not self._agent or model is not self._model:
            self._agent, self._model, self._due = agent, model, now + _SETTLE_S
        if self._due is not None and now >= self._due:
            self._due = None
            released = release_startup_pages()
            active = agent.detector.active
            log.info("released %.1f MB of start-up pages (model %s; malloc arenas %s)",
                     released / 2**20, active.label if active is not None else "none",
                     malloc_arenas())


def run(path: Path) -> int:
    """Run until SIGTERM/SIGINT; the process exit code."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        setup_logging()
        log.error("%s", exc)
        return 2
    setup_logging(config.log.level, config.log.json_format)
    limit_malloc_arenas()
    signals = _Signals()
    signals.install()
    agent = Agent(config)
    try:
        agent.start()
    except Exception as exc:
        log.error("agent %s cannot start: %s", config.device_id, exc)
        return 1
    notify("READY=1")
    notify(f"STATUS=running as {config.device_id}")
    keepalive = watchdog_interval()
    pages = _StartupPages()
    while not signals.stop.is_set():
        signals.wake.wait(keepalive if keepalive else 1.0)
        signals.wake.clear()
        if keepalive and agent.healthy():
            notify("WATCHDOG=1")
        if signals.reload.is_set() and not signals.stop.is_set():
            signals.reload.clear()
            config, agent = _reload(path, config, agent)
        if config.daemon.release_startup_pages:
            pages.tick(agent)
    log.info("%s: stopping within %.1fs", signals.stop_signal, config.daemon.grace_s)
    notify("STOPPING=1")
    flushed = agent.stop(timeout=config.daemon.grace_s)
    if not flushed:
        log.warning("stopped with unsent messages kept in the outbox for the next start")
    return 0
