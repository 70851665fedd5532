"""The daemon: a :class:`~edge_agent.core.DeviceCore` with its real collaborators and threads.

The core holds all of the device's behaviour; the agent gives it the real MQTT link
(:class:`~edge_agent.comms.mqtt.MqttLink`), the durable SQLite outbox, the on-disk model store
with the isolated signature check, the TFLite loader, the sensor source and four threads: the
reader (source → queue), the worker (readings, inbound messages and the core's tick, so a model
swap always falls between two windows), the sender (PUBACKs, link changes, the in-flight window)
and the link's own. Several agents can run in one process, each with its own ``state_dir`` and
MQTT connection (the simulator's demo does this).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.comms.mqtt import InboundMessage, LinkEvent, LinkSettings, MqttLink, Wake
from edge_agent.config import AgentConfig
from edge_agent.core import DeviceCore
from edge_agent.detect.detector import Detector
from edge_agent.health import rss_bytes
from edge_agent.models.loader import load_model
from edge_agent.models.report import ModelReport
from edge_agent.models.store import ModelStore, write_atomic
from edge_agent.sources.base import Reading, SensorSource
from edge_agent.sources.registry import create_source
from edge_agent.telemetry.batcher import TelemetryBatcher
from edge_agent.telemetry.outbox import Outbox
from edge_agent.telemetry.sender import Sender
from edge_agent.trust.keyring import open_keyring
from shared.messages import DeviceStatus

__all__ = ["Agent", "STATUS_FILE"]

log = logging.getLogger(__name__)
STATUS_FILE = "status.json"
_STATUS_EVERY_S = 5.0
# How long stop() waits, past the grace period, for the worker to store what it already read.
_WORKER_FINISH_S = 60.0


class _Running:
    """What exists only while the agent runs (built by start(), dropped by stop())."""

    def __init__(self, *, source: SensorSource, outbox: Outbox, link: MqttLink,
                 core: DeviceCore, sender: Sender, reader: threading.Thread,
                 worker: threading.Thread) -> None:
        self.source = source
        self.outbox = outbox
        self.link = link
        self.core = core
        self.sender = sender
        self.reader = reader
        self.worker = worker


class Agent:
    def __init__(self, config: AgentConfig, source: SensorSource | None = None) -> None:
        self.config = config
        self.device_id = config.device_id
        self.topics = config.topics()
        self._source_override = source
        self._final_status: dict[str, Any] | None = None
        self._events: queue.Queue[list[Reading] | InboundMessage] = queue.Queue(maxsize=10_000)
        self._stop_reading = threading.Event()
        self._stop_working = threading.Event()
        self._run: _Running | None = None  # while started
        self._last: _Running | None = None  # the last run's parts, readable after stop()
        self._worker_beat = time.monotonic()

    # -- the running parts (for the simulator, the daemon and tests) -------------------------
    @property
    def running(self) -> _Running:
        """The parts of the current run, or of the last one once stopped (its outbox is
        closed then, but e.g. its epoch and its detector's counters are still there)."""
        run = self._run or self._last
        if run is None:
            raise RuntimeError(f"agent {self.device_id} was never started")
        return run

    @property
    def core(self) -> DeviceCore:
        return self.running.core

    @property
    def outbox(self) -> Outbox:
        return self.running.outbox

    @property
    def detector(self) -> Detector:
        return self.running.core.detector

    @property
    def batcher(self) -> TelemetryBatcher:
        return self.running.core.batcher

    @property
    def link(self) -> MqttLink:
        return self.running.link

    @property
    def source(self) -> SensorSource:
        return self.running.source

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Open the state, connect in the background and start the threads; returns at once."""
        if self._run is not None:
            return
        cfg = self.config
        self._final_status = None
        self._stop_reading.clear()
        self._stop_working.clear()
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        source = self._source_override or create_source(cfg.source.type, cfg.source.options)
        channels = list(source.channels)
        outbox = Outbox(
            state / "outbox.db", max_bytes=cfg.outbox.max_bytes, max_age_s=cfg.outbox.max_age_s,
            anomaly_max_age_s=cfg.outbox.anomaly_max_age_s, synchronous=cfg.outbox.synchronous,
            ack_timeout_s=cfg.outbox.ack_timeout_s, probe_max_s=cfg.outbox.probe_max_s,
        )
        control: queue.Queue[LinkEvent] = queue.Queue()
        holder: list[DeviceCore] = []  # the will needs the core, which needs the link
        link = MqttLink(
            LinkSettings(
                client_id=self.device_id, host=cfg.mqtt.host, port=cfg.mqtt.port,
                keepalive=cfg.mqtt.keepalive, username=cfg.username, password=cfg.mqtt.password,
                tls=cfg.mqtt.tls, tls_ca_file=cfg.mqtt.tls_ca_file,
                session_expiry_s=cfg.mqtt.session_expiry_s,
                reconnect_initial_s=cfg.mqtt.reconnect_initial_s,
                reconnect_max_s=cfg.mqtt.reconnect_max_s,
                will=(self.topics.status(self.device_id),
                      lambda: holder[0].status_payload(DeviceStatus.OFFLINE)),
            ),
            inbound=self._events,  # type: ignore[arg-type]  # readings share the worker's queue
            control=control,
        )
        trust = open_keyring(cfg.trust.keys, state)
        core = DeviceCore(
            cfg, channels=channels, outbox=outbox, store=ModelStore(state / "models", trust),
            trust=trust, wire=link, rss=rss_bytes, on_report=self._on_report,
            on_queued=lambda: control.put_nowait(Wake()),
            loader=lambda manifest, data: load_model(
                manifest, data, channels=channels, num_threads=cfg.model.num_threads),
        )
        holder.append(core)
        core.source_bad_readings = lambda: source.bad_readings
        sender = Sender(control, core, name=f"sender-{self.device_id}")
        self._run = self._last = _Running(
            source=source, outbox=outbox, link=link, core=core, sender=sender,
            reader=threading.Thread(target=self._read, name=f"reader-{self.device_id}",
                                    daemon=True),
            worker=threading.Thread(target=self._work, name=f"worker-{self.device_id}",
                                    daemon=True),
        )
        core.start()
        link.start()
        sender.start()
        self._run.worker.start()
        self._run.reader.start()
        log.info("agent %s started (source %s, channels %s, outbox depth %d)", self.device_id,
                 type(source).__name__, channels, outbox.depth())
        if not cfg.trust.keys:
            log.warning("agent %s: no pinned signing key in [trust.keys]: every model will be "
                        "refused (the hub's key: GET /api/v1/signing-key)", self.device_id)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop reading, flush within the grace period, publish offline, disconnect.
        Returns True when a hub acknowledged everything accepted, in time."""
        run = self._run
        if run is None:
            return True
        grace = self.config.daemon.grace_s if timeout is None else timeout
        deadline = time.monotonic() + grace
        self._stop_reading.set()
        run.reader.join(max(0.5, min(2.0, grace)))
        self._stop_working.set()
        run.worker.join(max(0.5, deadline - time.monotonic()))
        if run.worker.is_alive():
            # It is storing readings already taken from the source (a slow disk makes each commit
            # wait): closing the outbox under it would lose them and fail the thread.
            log.warning("agent %s: still storing what was read; waiting up to %.0f s more",
                        self.device_id, _WORKER_FINISH_S)
            run.worker.join(_WORKER_FINISH_S)
        try:
            run.source.close()
        except Exception:
            log.exception("closing the source failed")
        flushed = self._flush(run, deadline)
        if not flushed:
            log.warning("agent %s: %d message(s) still unacknowledged at stop; they stay in the "
                        "outbox and are sent after the next start", self.device_id,
                        run.outbox.depth())
        run.sender.stop(timeout=2.0)
        run.link.stop(final=(self.topics.status(self.device_id),
                             run.core.status_payload(DeviceStatus.OFFLINE)),
                      timeout=max(1.0, min(5.0, deadline - time.monotonic())))
        self._write_status_file()
        self._final_status = {**self.status(), "connected": False}
        if run.worker.is_alive():
            log.error("agent %s: the worker did not stop; the outbox is left open", self.device_id)
        else:
            run.outbox.close()
        self._run = None
        log.info("agent %s stopped", self.device_id)
        return flushed

    def _flush(self, run: _Running, deadline: float) -> bool:
        """Wait for the hub to acknowledge everything, handling its acknowledgements here (the
        worker has stopped). With nothing pending it returns at once, hub or no hub; and so it
        does with the link down: nothing can be sent then, and waiting out the grace period
        only delayed the stop (what is pending stays in the outbox for the next start)."""
        run.sender.wake()
        while run.outbox.depth() > 0:
            if not run.link.connected:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                item = self._events.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if isinstance(item, InboundMessage):
                run.core.on_message(item.topic, item.payload, retain=item.retain,
                                    properties=item.properties)
        return True

    # -- what the operator and the simulator see -------------------------------------------
    def healthy(self, stale_after_s: float = 30.0) -> bool:
        """The worker is alive and went round its loop recently (for the systemd watchdog)."""
        run = self._run
        return (
            run is not None
            and run.worker.is_alive()
            and time.monotonic() - self._worker_beat < stale_after_s
        )

    def status(self) -> dict[str, Any]:
        """The core's :class:`~edge_agent.core.CoreStatus` and what the link knows, as the
        ``status.json`` record."""
        if self._final_status is not None:  # stopped: the outbox is closed, report the last
            return dict(self._final_status)
        run = self._run
        if run is None:
            return {"device_id": self.device_id, "connected": False, "started": False}
        record = run.core.status().as_dict()
        link = run.link
        errors = [(at or 0.0, text) for at, text in (
            (record["last_error_at"], record["last_error"]),
            (link.last_error_at, link.last_error)) if text]
        at, text = max(errors, default=(None, None))
        record.update(
            connected=link.connected, reconnects=link.reconnects, last_error=text,
            last_error_at=at, session_conflict=link.session_conflict,
            session_takeovers=link.takeovers,
        )
        return record

    # -- threads -------------------------------------------------------------------------
    def _read(self) -> None:
        source = self.running.source
        while not self._stop_reading.is_set():
            try:
                readings = source.read(0.2)
            except Exception:
                log.exception("agent %s: the source failed; retrying", self.device_id)
                self._stop_reading.wait(1.0)
                continue
            if readings:
                self._events.put(readings)
            if source.exhausted:
                log.info("agent %s: the source has no more readings", self.device_id)
                return

    def _work(self) -> None:
        core = self.running.core
        next_status = time.monotonic()
        while True:
            self._worker_beat = time.monotonic()
            stopping = self._stop_working.is_set()
            try:
                item = self._events.get(timeout=0.0 if stopping else 0.1)
            except queue.Empty:
                item = None
                if stopping:
                    break
            try:
                if isinstance(item, InboundMessage):
                    core.on_message(item.topic, item.payload, retain=item.retain,
                                    properties=item.properties)
                elif isinstance(item, list):
                    core.on_readings(item)
                core.tick()
                now = time.monotonic()
                if now >= next_status:
                    next_status = now + min(_STATUS_EVERY_S, self.config.heartbeat.interval_s)
                    self._write_status_file()
            except Exception:
                log.exception("agent %s: unexpected error in the worker; going on", self.device_id)
        core.flush()

    def _on_report(self, report: ModelReport) -> None:
        if self._run is not None:  # not during start(), before the threads exist
            self._write_status_file()

    def _write_status_file(self) -> None:
        record = dict(self.status(), updated_at=time.time())
        try:
            # A report, not data: renamed into place without the two fsyncs a model file gets
            # (they stalled this thread, which scores readings, every few seconds).
            write_atomic(Path(self.config.state_dir) / STATUS_FILE,
                         json.dumps(record, sort_keys=True).encode(), durable=False)
        except OSError as exc:
            log.warning("agent %s: cannot write %s: %s", self.device_id, STATUS_FILE, exc)
