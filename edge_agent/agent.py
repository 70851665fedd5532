"""The agent: wires source → detector and batches → outbox → MQTT, and desired → model updates.

Threads: one reads the source, one worker does everything stateful (windows, scoring, batches,
model updates, heartbeats) so a model swap always falls between two windows, one sender moves
the outbox to the link, and the link's own. Several agents can run in one process, each with
its own ``state_dir`` and MQTT connection (the simulator does this).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.comms.mqtt import InboundMessage, LinkEvent, LinkSettings, MqttLink
from edge_agent.config import AgentConfig
from edge_agent.detect.detector import Detection, Detector
from edge_agent.drift.federated import WindowScatter
from edge_agent.drift.monitor import DriftMonitor
from edge_agent.health import rss_bytes
from edge_agent.models.loader import load_model
from edge_agent.models.store import ModelStore, write_atomic
from edge_agent.models.updater import ModelReport, ModelUpdater
from edge_agent.sources.base import Reading, SensorSource
from edge_agent.sources.registry import create_source
from edge_agent.telemetry.batcher import TelemetryBatcher
from edge_agent.telemetry.outbox import Outbox, OutboxError, Stream
from edge_agent.telemetry.presence import HubWatch
from edge_agent.telemetry.sender import Sender
from edge_agent.trust.keyring import open_keyring
from shared.messages import (
    Ack,
    AnomalyEvent,
    Desired,
    DeviceStatus,
    DriftSummary,
    Heartbeat,
    MessageError,
    Reported,
    Status,
    decode,
    encode,
)
from shared.timefmt import iso_time
from shared.topics import HUB_STATUS, TRUST, DeviceTopic, TopicError

__all__ = ["Agent", "STATUS_FILE"]

log = logging.getLogger(__name__)
STATUS_FILE = "status.json"
_STATUS_EVERY_S = 5.0
# How long stop() waits, past the grace period, for the worker to store what it already read.
_WORKER_FINISH_S = 60.0


class Agent:
    def __init__(self, config: AgentConfig, source: SensorSource | None = None) -> None:
        self.config = config
        self.device_id = config.device_id
        self.topics = config.topics()
        self._source_override = source
        self._final_status: dict[str, Any] | None = None
        self._events: queue.Queue[Any] = queue.Queue(maxsize=10_000)
        self._stop_reading = threading.Event()
        self._stop_working = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = time.monotonic()
        self._started = False
        self.readings = 0
        self.bad_readings = 0
        self.bad_messages = 0
        self.anomalies_raised = 0
        self.stored = {s: 0 for s in Stream}  # acknowledged by a hub
        self.drift: DriftMonitor | None = None
        self.stored_readings = 0
        self.outbox_refusals = 0
        self._bad_topics: set[str] = set()
        self._worker_beat = time.monotonic()

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Open the state, connect in the background and start the threads; returns at once."""
        if self._started:
            return
        cfg = self.config
        self._final_status = None
        self._threads = []
        self._stop_reading.clear()
        self._stop_working.clear()
        state = Path(cfg.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.source = self._source_override or create_source(cfg.source.type, cfg.source.options)
        self.channels = list(self.source.channels)
        self.outbox = Outbox(
            state / "outbox.db", max_bytes=cfg.outbox.max_bytes, max_age_s=cfg.outbox.max_age_s,
            anomaly_max_age_s=cfg.outbox.anomaly_max_age_s, synchronous=cfg.outbox.synchronous,
            ack_timeout_s=cfg.outbox.ack_timeout_s, probe_max_s=cfg.outbox.probe_max_s,
        )
        self.hubs = HubWatch(prefix=self.topics.prefix,
                             silence_warn_s=cfg.outbox.hub_silence_warn_s,
                             name=f"agent {self.device_id}")
        control: queue.Queue[LinkEvent] = queue.Queue()
        self.link = MqttLink(
            LinkSettings(
                client_id=self.device_id, host=cfg.mqtt.host, port=cfg.mqtt.port,
                keepalive=cfg.mqtt.keepalive, username=cfg.username, password=cfg.mqtt.password,
                tls=cfg.mqtt.tls, tls_ca_file=cfg.mqtt.tls_ca_file,
                session_expiry_s=cfg.mqtt.session_expiry_s,
                reconnect_initial_s=cfg.mqtt.reconnect_initial_s,
                reconnect_max_s=cfg.mqtt.reconnect_max_s,
                will=(self.topics.status(self.device_id),
                      lambda: self._status(DeviceStatus.OFFLINE)),
            ),
            inbound=self._events,
            control=control,
        )
        self.link.set_birth(self.topics.status(self.device_id),
                            lambda: self._status(DeviceStatus.ONLINE))
        self.link.subscribe(self.topics.all_trust(), 1)  # before desired: keys, then models
        self.link.subscribe(self.topics.desired(self.device_id), 1)
        self.link.subscribe(self.topics.all_hub_status(), 1)
        self.link.subscribe(self.topics.ack(self.device_id), 1)
        self.sender = Sender(self.outbox, self.link, control, max_inflight=cfg.outbox.max_inflight,
                             name=f"sender-{self.device_id}")
        summaries = cfg.telemetry.upload == "summaries"
        self.drift = DriftMonitor(cfg.drift, self.channels, training=WindowScatter(
            cfg.federated, len(self.channels)) if summaries else None,
        ) if cfg.drift.enabled or summaries else None
        self.detector = Detector(self.channels, realert_windows=cfg.model.realert_windows,
                                 adaptation=cfg.adaptation, observer=self.drift)
        self.trust = open_keyring(cfg.trust.keys, state)
        self.store = ModelStore(state / "models", self.trust)
        self.updater = ModelUpdater(
            store=self.store, topics=self.topics, link=self.link, detector=self.detector,
            loader=lambda manifest, data: load_model(
                manifest, data, channels=self.channels, num_threads=cfg.model.num_threads),
            settings=cfg.model, on_report=self._publish_reported,
        )
        self.batcher = TelemetryBatcher(
            self.outbox, device_id=self.device_id, channels=self.channels,
            topic=self.topics.telemetry(self.device_id),
            max_readings=cfg.telemetry.batch_max_readings,
            max_age_s=cfg.telemetry.batch_max_age_s, on_stored=self.sender.wake,
        )
        self.updater.load_current()
        self._started_at = time.monotonic()
        self.link.start()
        self.sender.start()
        for target, name in ((self._work, "worker"), (self._read, "reader")):
            thread = threading.Thread(target=target, name=f"{name}-{self.device_id}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._started = True
        log.info("agent %s started (source %s, channels %s, outbox depth %d)", self.device_id,
                 type(self.source).__name__, self.channels, self.outbox.depth())
        if not cfg.trust.keys:
            log.warning("agent %s: no pinned signing key in [trust.keys]: every model will be "
                        "refused (the hub's key: GET /api/v1/signing-key)", self.device_id)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop reading, flush within the grace period, publish offline, disconnect.
        Returns True when a hub acknowledged everything accepted, in time."""
        if not self._started:
            return True
        grace = self.config.daemon.grace_s if timeout is None else timeout
        deadline = time.monotonic() + grace
        self._stop_reading.set()
        reader, worker = self._threads[1], self._threads[0]
        reader.join(max(0.5, min(2.0, grace)))
        self._stop_working.set()
        worker.join(max(0.5, deadline - time.monotonic()))
        if worker.is_alive():
            # It is storing readings already taken from the source (a slow disk makes each commit
            # wait): closing the outbox under it would lose them and fail the thread.
            log.warning("agent %s: still storing what was read; waiting up to %.0f s more",
                        self.device_id, _WORKER_FINISH_S)
            worker.join(_WORKER_FINISH_S)
        try:
            self.source.close()
        except Exception:
            log.exception("closing the source failed")
        flushed = self._flush(deadline)
        if not flushed:
            log.warning("agent %s: %d message(s) still unacknowledged at stop; they stay in the "
                        "outbox and are sent after the next start", self.device_id,
                        self.outbox.depth())
        self.sender.stop(timeout=2.0)
        self.link.stop(final=(self.topics.status(self.device_id),
                              self._status(DeviceStatus.OFFLINE)),
                       timeout=max(1.0, min(5.0, deadline - time.monotonic())))
        self._write_status_file()
        self._final_status = {**self.status(), "connected": False}
        if worker.is_alive():
            log.error("agent %s: the worker did not stop; the outbox is left open", self.device_id)
        else:
            self.outbox.close()
        self._started = False
        log.info("agent %s stopped", self.device_id)
        return flushed

    def _flush(self, deadline: float) -> bool:
        """Wait for the hub to acknowledge everything, handling its acknowledgements here (the
        worker has stopped)."""
        self.sender.wake()
        while self.outbox.depth() > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                item = self._events.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if isinstance(item, InboundMessage):
                self._on_message(item)
        return True

    # -- what the operator and the simulator see -------------------------------------------
    def healthy(self, stale_after_s: float = 30.0) -> bool:
        """The worker is alive and went round its loop recently (for the systemd watchdog)."""
        return (
            self._started
            and all(t.is_alive() for t in self._threads[:1])
            and time.monotonic() - self._worker_beat < stale_after_s
        )

    def status(self) -> dict[str, Any]:
        if self._final_status is not None:  # stopped: the outbox is closed, report the last
            return dict(self._final_status)
        if not hasattr(self, "outbox"):
            return {"device_id": self.device_id, "connected": False, "started": False}
        active = self.detector.active
        drops = self.outbox.drops()
        p50, p99 = self.detector.inference_us()
        return {
            "device_id": self.device_id,
            "connected": self.link.connected,
            "active_model": None if active is None else {
                "name": active.manifest.name, "version": active.manifest.version,
                "sha256": active.manifest.sha256,
            },
            "model_state": self.updater.state.value if self.updater.state else None,
            "threshold": None if active is None else active.threshold,
            "runtime": None if active is None else getattr(active.runtime, "runtime", None),
            "readings": self.readings,
            "batches_sent": self.sender.acked[Stream.TELEMETRY],
            "readings_sent": self.sender.acked_readings,
            "anomalies_raised": self.anomalies_raised,
            "anomalies_sent": self.sender.acked[Stream.ANOMALIES],
            "outbox_depth": self.outbox.depth(),
            "outbox_bytes": self.outbox.pending_bytes(),
            "oldest_unsent_age_s": self.outbox.oldest_age(),
            "drops": drops.messages,
            "dropped_readings": drops.telemetry_readings,
            "dropped_anomalies": drops.anomalies,
            "bad_readings": self.bad_readings + self.source.bad_readings,
            "bad_messages": self.bad_messages + self.updater.refused,
            "outbox_refusals": self.outbox_refusals,
            "outbox_delivered": self.outbox.delivered(),
            "batches_stored": self.stored[Stream.TELEMETRY],
            "readings_stored": self.stored_readings,
            "anomalies_stored": self.stored[Stream.ANOMALIES],
            "drift": self.drift.status() if self.drift is not None else None,
            "drift_summaries_stored": self.stored[Stream.DRIFT],
            "resent": self.outbox.resent,
            "hub": self.hubs.status(),
            "reconnects": self.link.reconnects,
            "inference_us_p50": p50,
            "inference_us_p99": p99,
            "uptime_s": time.monotonic() - self._started_at,
            **self._last_error(),
            "session_conflict": self.link.session_conflict,
            "session_takeovers": self.link.takeovers,
            "trust_version": self.trust.version,
            "trusted_keys": sorted(self.trust.trusted()),
            "trust_refused": self.trust.refused,
        }

    def _last_error(self) -> dict[str, Any]:
        """The most recent error of the model updater and the link, with its wall-clock time."""
        errors = [(at or 0.0, text) for at, text in (
            (self.updater.last_error_at, self.updater.last_error),
            (self.link.last_error_at, self.link.last_error)) if text]
        at, text = max(errors, default=(None, None))
        return {"last_error": text, "last_error_at": at}

    # -- threads -------------------------------------------------------------------------
    def _read(self) -> None:
        while not self._stop_reading.is_set():
            try:
                readings = self.source.read(0.2)
            except Exception:
                log.exception("agent %s: the source failed; retrying", self.device_id)
                self._stop_reading.wait(1.0)
                continue
            if readings:
                self._events.put(readings)
            if self.source.exhausted:
                log.info("agent %s: the source has no more readings", self.device_id)
                return

    def _work(self) -> None:
        next_heartbeat = time.monotonic() + min(5.0, self.config.heartbeat.interval_s)
        next_status = time.monotonic()
        next_drift = time.monotonic() + self.config.drift.summary_interval_s
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
                    self._on_message(item)
                elif isinstance(item, list):
                    for reading in item:
                        self._on_reading(reading)
                self.hubs.link(self.link.connected)
                self.hubs.check()
                self.batcher.flush_if_due()
                self.updater.tick()
                failure = self.detector.take_failure()
                if failure is not None:
                    self.updater.on_runtime_failure(*failure)
                now = time.monotonic()
                if now >= next_heartbeat:
                    next_heartbeat = now + self.config.heartbeat.interval_s
                    self._send_heartbeat()
                if now >= next_status:
                    next_status = now + min(_STATUS_EVERY_S, self.config.heartbeat.interval_s)
                    self._write_status_file()
                if now >= next_drift:
                    next_drift = now + self.config.drift.summary_interval_s
                    self._send_drift()
            except OutboxError as exc:
                self.outbox_refusals += 1
                log.error("agent %s: outbox refused a message: %s", self.device_id, exc)
            except Exception:
                log.exception("agent %s: unexpected error in the worker; going on", self.device_id)
        try:
            self.batcher.flush()
        except OutboxError as exc:
            log.error("agent %s: last batch refused by the outbox: %s", self.device_id, exc)

    # -- work items --------------------------------------------------------------------
    def _on_reading(self, reading: Reading) -> None:
        values = reading.values
        if (
            len(values) != len(self.channels)
            or not all(isinstance(v, float | int) and math.isfinite(v) for v in values)
            or not math.isfinite(reading.ts)
            or reading.ts < 0
        ):
            self.bad_readings += 1
            if self.bad_readings <= 10 or self.bad_readings % 1000 == 0:
                log.warning("agent %s: bad reading skipped (%d so far): ts=%r values=%r",
                            self.device_id, self.bad_readings, reading.ts, values[:8])
            return
        self.readings += 1
        if self.config.telemetry.upload == "raw":
            self.batcher.add(reading)
        detection = self.detector.push(reading)
        if self.drift is not None:
            self.drift.observe(reading.ts, reading.values)
        if detection is not None:
            self._raise_anomaly(detection)

    def _send_drift(self) -> None:
        """The drift summary of the period that just ended, through the outbox."""
        fields = self.drift.take_summary() if self.drift is not None else None
        if fields is None:
            return

        def build(seq: int) -> bytes:
            return encode(DriftSummary(device_id=self.device_id, epoch=self.outbox.epoch,
                                       seq=seq, **fields))

        self.outbox.add(device_id=self.device_id, stream=Stream.DRIFT,
                        topic=self.topics.drift(self.device_id), build=build)
        self.sender.wake()

    def _raise_anomaly(self, d: Detection) -> None:
        def build(seq: int) -> bytes:
            return encode(AnomalyEvent(
                device_id=self.device_id, epoch=self.outbox.epoch, seq=seq, ts=d.ts,
                score=d.score, threshold=d.threshold, model=d.model, channels=d.channels,
                detected_at=d.detected_at,
            ))

        self.outbox.add(device_id=self.device_id, stream=Stream.ANOMALIES,
                        topic=self.topics.anomalies(self.device_id), build=build)
        self.anomalies_raised += 1
        log.info("agent %s: anomaly at %s, score %.4g over threshold %.4g (model %s v%d, "
                 "channels %s)", self.device_id, iso_time(d.ts[0]), d.score, d.threshold,
                 d.model.name, d.model.version, ", ".join(d.channels))
        self.sender.wake()

    def _on_message(self, message: InboundMessage) -> None:
        try:
            parsed = self.topics.parse(message.topic)
            if parsed.kind == DeviceTopic.DESIRED.value and parsed.device_id == self.device_id:
                if not message.payload:
                    return  # desired cleared
                desired = decode(Desired, message.payload)
                if desired.device_id != self.device_id:
                    raise MessageError(f"Desired: device_id {desired.device_id!r} is not "
                                       f"{self.device_id!r}")
                self.updater.want(desired.model, desired.issued_at)
            elif parsed.kind in ("manifest", "chunk"):
                self.updater.on_message(parsed, message.payload)
            elif parsed.kind == TRUST and parsed.model_version is not None:
                self.trust.offer(parsed.model_version, message.payload)
            elif parsed.kind == DeviceTopic.ACK.value and parsed.device_id == self.device_id:
                if message.payload:
                    self._on_ack(decode(Ack, message.payload), live=not message.retain)
            elif parsed.kind == HUB_STATUS and parsed.device_id is not None:
                self.hubs.on_payload(parsed.device_id, message.payload)
        except (MessageError, TopicError) as exc:
            self.bad_messages += 1
            if message.topic not in self._bad_topics:
                self._bad_topics.add(message.topic)
                log.error("agent %s: bad message on %s: %s", self.device_id, message.topic, exc)

    def _on_ack(self, ack: Ack, *, live: bool) -> None:
        if ack.device_id != self.device_id:
            raise MessageError(f"Ack: device_id {ack.device_id!r} is not {self.device_id!r}")
        result = self.outbox.apply_ack(ack, live=live)
        for stream, count in result.stored.items():
            self.stored[stream] += count
        self.stored_readings += result.stored_readings
        if any(result.stored.values()) or result.resend:
            self.sender.wake()  # room in the window, or messages to send again

    def _publish_reported(self, report: ModelReport) -> None:
        message = Reported(
            device_id=self.device_id, model=report.model, state=report.state,
            error=report.error, since=report.since, active=report.active,
            threshold=report.threshold,
        )
        self.link.set_birth(self.topics.reported(self.device_id), encode(message))
        self._write_status_file()

    def _send_heartbeat(self) -> None:
        s = self.status()
        beat = Heartbeat(
            device_id=self.device_id, at=time.time(), uptime_s=s["uptime_s"],
            rss_bytes=rss_bytes(), inference_us_p50=s["inference_us_p50"],
            inference_us_p99=s["inference_us_p99"], outbox_depth=s["outbox_depth"],
            oldest_unsent_age_s=s["oldest_unsent_age_s"], drops=s["drops"],
            reconnects=s["reconnects"], bad_readings=s["bad_readings"],
            drift=self.drift.brief() if self.drift is not None else None,
        )
        self.link.publish(self.topics.heartbeat(self.device_id), encode(beat), qos=0)

    def _status(self, state: DeviceStatus) -> bytes:
        return encode(Status(device_id=self.device_id, state=state, at=time.time(),
                             agent_version=__version__))

    def _write_status_file(self) -> None:
        record = dict(self.status(), updated_at=time.time())
        try:
            write_atomic(Path(self.config.state_dir) / STATUS_FILE,
                         json.dumps(record, sort_keys=True).encode())
        except OSError as exc:
            log.warning("agent %s: cannot write %s: %s", self.device_id, STATUS_FILE, exc)
