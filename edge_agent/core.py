"""One device's behaviour, with no thread, no MQTT client and no clock of its own.

:class:`DeviceCore` is what a device does: readings in (window → score → anomaly, batches into
the outbox), messages in (desired → manifest → chunks → verify → shadow → swap; hub
acknowledgements; trust lists; hub presence), the link going up and down, a periodic
:meth:`~DeviceCore.tick` (batch age, update timeouts and shadow end, a failed model's rollback,
heartbeat, drift summary) and :meth:`~DeviceCore.send_now` (what the in-flight window lets go
out now). Everything else comes in as collaborators (:mod:`edge_agent.ports`): a clock, the
:class:`~edge_agent.telemetry.outbox.Outbox`, the :class:`~edge_agent.models.store.ModelStore`
(which holds the signature verifier), the trust ring, the model loader (the TFLite runtime), and
a wire (the connection: ``MqttLink`` in the daemon, one socket of a many-device loop in
the simulator, a list in the unit tests). What it reports about the device (its status and
heartbeat) is built in :mod:`edge_agent.core_status`.

Who calls what: the daemon (:mod:`edge_agent.agent`) calls the reading, message and tick
methods from one worker thread and the PUBACK/link/send methods from its sender thread (the
outbox, the only state they share, is locked); a many-device loop calls all of them from one
thread.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.core_status import heartbeat_of, status_of
from edge_agent.detect.detector import Detector
from edge_agent.detect.records import Detection
from edge_agent.drift.federated import WindowScatter
from edge_agent.drift.monitor import DriftMonitor
from edge_agent.inference.runtime import installed_runtime, loaded_runtime
from edge_agent.models.report import ModelReport
from edge_agent.models.store import ModelStore
from edge_agent.models.updater import UNLIMITED, ModelLoader, ModelUpdater, StepBudget
from edge_agent.ports import SYSTEM_CLOCK, Clock, CoreStatus, TrustRing, Wire
from edge_agent.sources.base import Reading
from edge_agent.telemetry.batcher import TelemetryBatcher
from edge_agent.telemetry.outbox import Outbox, OutboxError, Stream
from edge_agent.telemetry.presence import HubWatch
from edge_agent.telemetry.sender import SendWindow
from shared.messages import (
    Ack,
    AgentRuntime,
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

__all__ = ["DeviceCore"]

log = logging.getLogger(__name__)

# Recent readings held before any model runs: a model that arrives (or starts its shadow run)
# scores from the next reading instead of waiting a whole window. Small: 128 rows of floats.
_KEEP_READINGS = 128


class DeviceCore:
    """All of one device's behaviour; see the module docstring for who calls what."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        channels: list[str],
        outbox: Outbox,
        store: ModelStore,
        trust: TrustRing,
        loader: ModelLoader,
        wire: Wire,
        clock: Clock = SYSTEM_CLOCK,
        rss: Callable[[], int] = lambda: 0,
        on_report: Callable[[ModelReport], None] | None = None,
        on_queued: Callable[[], None] | None = None,
        agent_version: str = __version__,
        update_budget: StepBudget = UNLIMITED,
    ) -> None:
        """``on_report``: after each ``reported``; ``on_queued``: when the window may have
        something to send (a message entered the outbox, or an acknowledgement made room);
        ``update_budget``: when a model update's costly steps may run (a loop driving many
        devices shares one per round; the daemon runs them at once)."""
        self.config = config
        self.device_id = config.device_id
        self.topics = config.topics()
        self.channels = list(channels)
        self.outbox = outbox
        self.store = store
        self.trust = trust
        self.wire = wire
        self.clock = clock
        self.rss = rss  # the process's resident bytes, for the heartbeat
        self._on_report = on_report
        self._on_queued = on_queued or (lambda: None)
        self.agent_version = agent_version
        summaries = config.telemetry.upload == "summaries"
        self.drift: DriftMonitor | None = DriftMonitor(
            config.drift, self.channels,
            training=WindowScatter(config.federated, len(self.channels)) if summaries else None,
        ) if config.drift.enabled or summaries else None
        self.detector = Detector(self.channels, realert_windows=config.model.realert_windows,
                                 adaptation=config.adaptation, observer=self.drift,
                                 clock=clock.time, keep_readings=_KEEP_READINGS)
        self.updater = ModelUpdater(
            store=store, topics=self.topics, link=wire, detector=self.detector, loader=loader,
            settings=config.model, on_report=self._publish_reported, clock=clock.monotonic,
            budget=update_budget,
        )
        self.batcher = TelemetryBatcher(
            outbox, device_id=self.device_id, channels=self.channels,
            topic=self.topics.telemetry(self.device_id),
            max_readings=config.telemetry.batch_max_readings,
            max_age_s=config.telemetry.batch_max_age_s, clock=clock.monotonic,
            on_stored=self._on_queued, encoding=self._telemetry_encoding,
        )
        self.window = SendWindow(outbox, max_inflight=config.outbox.max_inflight,
                                 name=f"sender-{self.device_id}")
        self.hubs = HubWatch(prefix=self.topics.prefix,
                             silence_warn_s=config.outbox.hub_silence_warn_s,
                             name=f"agent {self.device_id}", clock=clock.monotonic)
        self._encoding_used = ""  # of the last telemetry batch (logged when it changes)
        self.readings = 0
        self.bad_readings = 0
        self.source_bad_readings: Callable[[], int] = lambda: 0
        self.bad_messages = 0
        self.anomalies_raised = 0
        self.outbox_refusals = 0
        self.acks_received = 0
        self.stored = {s: 0 for s in Stream}  # acknowledged by a hub
        self.stored_readings = 0
        self.connected = False
        self.connections = 0
        self._bad_topics: set[str] = set()
        self.started_at = clock.monotonic()
        now = clock.monotonic()
        # Devices started together (a fleet after a power cut, a simulator) would all send
        # their heartbeats in the same instant, every interval, and the hub would take a
        # thousand at once: each device's phase is its own (stable per device id).
        phase = random.Random(self.device_id).uniform(0.5, 1.0)
        self._next_heartbeat = now + min(5.0, config.heartbeat.interval_s) * phase
        self._next_drift = now + config.drift.summary_interval_s
        self._runtime_told: AgentRuntime | None = None  # the runtime the last status named

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe (the wire makes them again on every connect), announce online on every
        connect, and run the model the store says is current."""
        self.wire.set_birth(self.topics.status(self.device_id),
                            lambda: self.status_payload(DeviceStatus.ONLINE))
        self.wire.subscribe(self.topics.all_trust(), 1)  # before desired: keys, then models
        self.wire.subscribe(self.topics.desired(self.device_id), 1)
        self.wire.subscribe(self.topics.all_hub_status(), 1)
        self.wire.subscribe(self.topics.ack(self.device_id), 1)
        self.started_at = self.clock.monotonic()
        self.updater.load_current()

    # -- readings --------------------------------------------------------------------------
    def on_readings(self, readings: Iterable[Reading]) -> None:
        for reading in readings:
            try:
                self._on_reading(reading)
            except OutboxError as exc:
                self._refused(exc)

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
        self._on_queued()
        log.info("agent %s: anomaly at %s, score %.4g over threshold %.4g (model %s v%d, "
                 "channels %s)", self.device_id, iso_time(d.ts[0]), d.score, d.threshold,
                 d.model.name, d.model.version, ", ".join(d.channels))

    def _refused(self, exc: OutboxError) -> None:
        self.outbox_refusals += 1
        log.error("agent %s: outbox refused a message: %s", self.device_id, exc)

    # -- messages --------------------------------------------------------------------------
    def _telemetry_encoding(self) -> str:
        """The encoding of the next telemetry batch: the configured one, or with ``auto``
        MessagePack while every hub heard online says it reads it (:mod:`shared.packed`)."""
        chosen = self.config.telemetry.encoding
        if chosen == "auto":
            chosen = "msgpack" if self.hubs.reads("msgpack") else "json"
        if chosen != self._encoding_used:
            log.info("agent %s: telemetry goes out in %s (telemetry.encoding = %s)",
                     self.device_id, chosen, self.config.telemetry.encoding)
            self._encoding_used = chosen
        return chosen

    def on_message(self, topic: str, payload: bytes, *, retain: bool = False,
                   properties: Sequence[tuple[str, str]] = ()) -> None:
        """One inbound message (``properties``: its MQTT 5 user properties); a bad one is
        counted and logged once per topic, never raised."""
        try:
            parsed = self.topics.parse(topic)
            if parsed.kind == DeviceTopic.DESIRED.value and parsed.device_id == self.device_id:
                if not payload:
                    return  # desired cleared
                desired = decode(Desired, payload)
                if desired.device_id != self.device_id:
                    raise MessageError(f"Desired: device_id {desired.device_id!r} is not "
                                       f"{self.device_id!r}")
                self.updater.want(desired.model, desired.issued_at)
            elif parsed.kind in ("manifest", "chunk"):
                self.updater.on_message(parsed, payload)
            elif parsed.kind == TRUST and parsed.model_version is not None:
                self.trust.offer(parsed.model_version, payload)
            elif parsed.kind == DeviceTopic.ACK.value and parsed.device_id == self.device_id:
                if payload:
                    self._on_ack(decode(Ack, payload), live=not retain)
            elif parsed.kind == HUB_STATUS and parsed.device_id is not None:
                self.hubs.on_payload(parsed.device_id, payload, properties)
        except (MessageError, TopicError) as exc:
            self.bad_messages += 1
            if topic not in self._bad_topics:
                self._bad_topics.add(topic)
                log.error("agent %s: bad message on %s: %s", self.device_id, topic, exc)

    def _on_ack(self, ack: Ack, *, live: bool) -> None:
        if ack.device_id != self.device_id:
            raise MessageError(f"Ack: device_id {ack.device_id!r} is not {self.device_id!r}")
        result = self.outbox.apply_ack(ack, live=live)
        self.acks_received += 1
        for stream, count in result.stored.items():
            self.stored[stream] += count
        self.stored_readings += result.stored_readings
        if any(result.stored.values()) or result.resend:
            self._on_queued()  # room in the window, or messages to send again

    # -- the link and the window ---------------------------------------------------------------
    def on_link_up(self, session_present: bool = False) -> None:
        self.connected = True
        self.connections += 1
        self.hubs.link(True)
        self.window.link_changed()

    def on_link_down(self, reason: str = "") -> None:
        self.connected = False
        self.hubs.link(False)
        self.window.link_changed()

    def on_puback(self, mid: int, ok: bool = True, reason: str = "") -> None:
        self.window.puback(mid, ok, reason)

    def send_now(self) -> int:
        """Hand the wire what the in-flight window lets go out now; how many messages."""
        return self.window.fill(self.wire)

    # -- time ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Everything that is due: the batch's age, hub presence, update timeouts and the end of
        a shadow run, a failed model's rollback, the heartbeat, the drift summary."""
        try:
            self.batcher.flush_if_due()
        except OutboxError as exc:
            self._refused(exc)
        self.hubs.link(self.connected)
        self.hubs.check()
        self.updater.tick()
        failure = self.detector.take_failure()
        if failure is not None:
            self.updater.on_runtime_failure(*failure)
        now = self.clock.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat.interval_s
            self.wire.publish(self.topics.heartbeat(self.device_id),
                              encode(self.heartbeat()), qos=0)
        if now >= self._next_drift:
            self._next_drift = now + self.config.drift.summary_interval_s
            try:
                self._send_drift()
            except OutboxError as exc:
                self._refused(exc)

    def flush(self) -> None:
        """Write the open telemetry batch to the outbox now (at stop)."""
        try:
            self.batcher.flush()
        except OutboxError as exc:
            log.error("agent %s: last batch refused by the outbox: %s", self.device_id, exc)

    def _send_drift(self) -> None:
        fields = self.drift.take_summary() if self.drift is not None else None
        if fields is None:
            return

        def build(seq: int) -> bytes:
            return encode(DriftSummary(device_id=self.device_id, epoch=self.outbox.epoch,
                                       seq=seq, **fields))

        self.outbox.add(device_id=self.device_id, stream=Stream.DRIFT,
                        topic=self.topics.drift(self.device_id), build=build)
        self._on_queued()

    # -- what goes out about the device ----------------------------------------------------------
    def _publish_reported(self, report: ModelReport) -> None:
        message = Reported(
            device_id=self.device_id, model=report.model, state=report.state,
            error=report.error, since=report.since, active=report.active,
            threshold=report.threshold,
        )
        self.wire.set_birth(self.topics.reported(self.device_id), encode(message))
        if self._runtime() != self._runtime_told:
            # the first model load named the runtime (or found another than the installed one
            # the status named): the status says so at once, not only at the next connect (the
            # hub picks a model's variant by it)
            self.wire.set_birth(self.topics.status(self.device_id),
                                lambda: self.status_payload(DeviceStatus.ONLINE))
        if self._on_report is not None:
            self._on_report(report)

    def _runtime(self) -> AgentRuntime | None:
        simulated = self.config.model.simulated_runtime  # tests and simulations only
        if simulated is not None:
            return simulated
        return loaded_runtime() or installed_runtime()

    def status_payload(self, state: DeviceStatus) -> bytes:
        """The retained ``status`` record (online on every connect, offline as the will)."""
        self._runtime_told = self._runtime()
        return encode(Status(device_id=self.device_id, state=state, at=self.clock.time(),
                             agent_version=self.agent_version, runtime=self._runtime_told))

    def heartbeat(self) -> Heartbeat:
        """What :meth:`tick` publishes each interval (built in :mod:`edge_agent.core_status`)."""
        return heartbeat_of(self)

    def pending(self) -> int:
        """Messages not yet acknowledged by a hub, and readings not yet in a batch."""
        return self.outbox.depth() + self.batcher.pending()

    def status(self) -> CoreStatus:
        """What the device knows about itself (built in :mod:`edge_agent.core_status`)."""
        return status_of(self)
