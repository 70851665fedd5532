"""MQTT ingest: device streams into the store, acknowledged only after their commit.

paho runs with ``manual_ack=True``; ``on_message`` only queues. One worker thread takes up to
``batch_max`` messages, stores them in one transaction and only then sends their PUBACKs, so a
crash between receipt and commit makes the broker deliver them again, and the (device_id, seq)
keys make that redelivery harmless. A bad payload becomes a dead letter (stored, counted, logged
once with its topic, acknowledged) and ingest goes on.

The ingest client also announces the hub: every connection gets a new session id, a retained
offline :class:`HubStatus` as its last will, and, once the broker has granted every subscription
(so that nothing the devices send from then on goes to nobody), a retained online record. A
device that sees a new session after an outage sends again what the broker acknowledged while
no hub may have been subscribed (:mod:`edge_agent.telemetry.presence`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from cloud_hub.db.ingest_store import DeadLetterRecord, IngestBatch, StoreResult, store_batch
from cloud_hub.mqtt.client import connect_and_wait, new_client
from shared.messages import (
    MAX_PAYLOAD_BYTES,
    AnomalyEvent,
    DeviceStatus,
    Heartbeat,
    HubStatus,
    MessageError,
    Reported,
    Status,
    TelemetryBatch,
    WireMessage,
    decode,
    encode,
)
from shared.topics import DeviceTopic, TopicError, Topics

__all__ = ["IngestStats", "MqttIngest"]

log = logging.getLogger(__name__)

_DECODERS: dict[str, type[WireMessage]] = {
    DeviceTopic.TELEMETRY.value: TelemetryBatch,
    DeviceTopic.ANOMALIES.value: AnomalyEvent,
    DeviceTopic.STATUS.value: Status,
    DeviceTopic.HEARTBEAT.value: Heartbeat,
    DeviceTopic.REPORTED.value: Reported,
}
# Streams a share group may split between hub processes (when one is configured).
# Retained streams are subscribed directly: brokers do not send retained messages to shared
# subscriptions, and a hub that starts after a device must still learn its status and model.
_SHARED = (DeviceTopic.TELEMETRY, DeviceTopic.ANOMALIES, DeviceTopic.HEARTBEAT)
_DIRECT = (DeviceTopic.STATUS, DeviceTopic.REPORTED)
_LOG_FIRST_DEAD_LETTERS = 100


@dataclass
class IngestStats:
    messages_received: int = 0
    telemetry_batches: int = 0
    telemetry_readings: int = 0
    duplicates: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    retained_cleared: int = 0
    commits: int = 0
    commit_errors: int = 0
    last_commit_at: float | None = None
    births: int = 0  # retained "online" records published, one per granted subscription set
    subscribe_refusals: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class MqttIngest:
    """Subscribes to every device stream and stores what arrives; ``start()`` / ``stop()``."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        port: int,
        topics: Topics,
        client_id: str = "edgeloop-hub",
        keepalive: int = 30,
        share_group: str | None = None,
        batch_max: int = 500,
        batch_wait_s: float = 0.05,
        on_commit: Callable[[StoreResult], None] | None = None,
    ) -> None:
        self._engine = engine
        self.client_id = client_id
        self._host, self._port, self._keepalive = host, port, keepalive
        self._topics = topics
        self._share_group = share_group
        self._batch_max, self._batch_wait = batch_max, batch_wait_s
        self._on_commit = on_commit
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self.stats = IngestStats()
        self.session = ""  # this connection's id in the hub's presence record; new per attempt
        self._subscribe_mid: int | None = None
        self._client = new_client(client_id, manual_ack=True)
        self._client.on_pre_connect = self._on_pre_connect
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._worker = threading.Thread(target=self._run, name="hub-ingest", daemon=True)

    # -- paho callbacks: no work, only hand-off (and the hub's presence records) ----------
    def _status(self, state: DeviceStatus) -> bytes:
        return encode(HubStatus(device_id=self.client_id, state=state, session=self.session,
                                at=time.time()))

    def _on_pre_connect(self, client: mqtt.Client, _u: Any) -> None:
        # paho sends the will stored at each (re)connect: set this session's before each one.
        self.session = uuid.uuid4().hex
        client.will_set(self._topics.hub_status(self.client_id),
                        self._status(DeviceStatus.OFFLINE), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("ingest: broker refused the connection: %s", rc)
            return
        if self._share_group:
            subs = [(self._topics.hub_shared(t, self._share_group), 1) for t in _SHARED]
        else:
            subs = [(self._topics.all_devices(t), 1) for t in _SHARED]
        subs += [(self._topics.all_devices(t), 1) for t in _DIRECT]
        _rc, self._subscribe_mid = client.subscribe(subs)
        self._connected.set()

    def _on_subscribe(
        self, client: mqtt.Client, _u: Any, mid: int, reason_codes: list[Any], _p: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(rc) for rc in reason_codes if rc.value >= 0x80]
        if refused:
            with self._lock:
                self.stats.subscribe_refusals += 1
            log.error("ingest: broker refused subscriptions (%s); not announcing session %s",
                      ", ".join(refused), self.session)
            return
        client.publish(self._topics.hub_status(self.client_id),
                       self._status(DeviceStatus.ONLINE), qos=1, retain=True)
        with self._lock:
            self.stats.births += 1

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingest: disconnected from the broker (%s); reconnecting", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put(message)

    # -- life cycle ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, timeout: float = 10.0) -> None:
        self._worker.start()
        connect_and_wait(
            self._client, self._host, self._port, keepalive=self._keepalive,
            connected=self._connected, timeout=timeout, persistent=True,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what was already received, announce the hub offline (retained;
        a clean disconnect does not send the will), then disconnect."""
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout)
        if self.connected:
            info = self._client.publish(self._topics.hub_status(self.client_id),
                                        self._status(DeviceStatus.OFFLINE), qos=1, retain=True)
            try:
                info.wait_for_publish(min(timeout, 5.0))
                published = info.is_published()
            except (RuntimeError, ValueError):  # the connection went away meanwhile
                published = False
            if not published:
                log.warning("ingest: the broker did not acknowledge the hub's offline record")
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data = self.stats.as_dict()
        data["queue_depth"] = self._queue.qsize()
        data["mqtt_connected"] = self.connected
        data["session"] = self.session
        return data

    # -- worker --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            messages = [first]
            deadline = time.monotonic() + self._batch_wait
            while len(messages) < self._batch_max:
                remaining = deadline - time.monotonic()
                try:
                    messages.append(self._queue.get(timeout=max(remaining, 0)) if remaining > 0
                                    else self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit_with_retry(messages)

    def _commit_with_retry(self, messages: list[mqtt.MQTTMessage]) -> None:
        batch = self._decode_all(messages)
        delay = 0.1
        while True:
            try:
                with Session(self._engine) as session:
                    result = store_batch(session, batch)
                break
            except OperationalError:  # database down or locked: keep the batch, retry
                with self._lock:
                    self.stats.commit_errors += 1
                log.exception("ingest: commit of %d messages failed; retrying", len(messages))
                if self._stop.wait(delay):
                    return  # not acknowledged: the broker redelivers after reconnect
                delay = min(delay * 2, 5.0)
            except Exception as exc:  # something in these rows: find it, keep the rest
                with self._lock:
                    self.stats.commit_errors += 1
                if len(messages) > 1:
                    log.warning("ingest: batch of %d failed (%s); storing one by one",
                                len(messages), exc)
                    for m in messages:
                        self._commit_with_retry([m])
                    return
                m = messages[0]
                if batch.dead_letters and len(batch) == 1 and batch.dead_letters[0].reason \
                        .startswith("store failed"):
                    log.exception("ingest: cannot even dead-letter the message on %s; left "
                                  "unacknowledged for redelivery", m.topic)
                    return
                log.exception("ingest: storing the message on %s failed", m.topic)
                batch = IngestBatch(dead_letters=[DeadLetterRecord(
                    topic=m.topic, reason=f"store failed: {type(exc).__name__}: {exc}",
                    payload=bytes(m.payload), received_at=time.time())])
        for m in messages:
            if m.qos > 0:
                self._client.ack(m.mid, m.qos)
        with self._lock:
            s = self.stats
            s.messages_received += len(messages)
            s.telemetry_batches += result.telemetry_batches
            s.telemetry_readings += result.telemetry_readings
            s.duplicates += result.duplicates
            s.anomalies += result.anomalies
            s.dead_letters += result.dead_letters
            s.commits += 1
            s.last_commit_at = result.committed_at
        if self._on_commit is not None:
            try:
                self._on_commit(result)
            except Exception:
                log.exception("ingest: on_commit hook failed")

    def _decode_all(self, messages: list[mqtt.MQTTMessage]) -> IngestBatch:
        batch = IngestBatch()
        now = time.time()
        for m in messages:
            try:
                self._decode_one(m, batch)
            except Exception as exc:  # any bad payload is a dead letter, never a dead loop
                batch.dead_letters.append(
                    DeadLetterRecord(topic=m.topic, reason=str(exc), payload=bytes(m.payload),
                                     received_at=now)
                )
                with self._lock:
                    n = self.stats.dead_letters + len(batch.dead_letters)
                if n <= _LOG_FIRST_DEAD_LETTERS or n % 1000 == 0:
                    log.warning("ingest: dead letter #%d on %s: %s", n, m.topic, exc)
        return batch

    def _decode_one(self, m: mqtt.MQTTMessage, batch: IngestBatch) -> None:
        parsed = self._topics.parse(m.topic)
        cls = _DECODERS.get(parsed.kind)
        if cls is None or parsed.device_id is None:
            raise TopicError(f"topic {m.topic!r} is not a stream the hub ingests")
        # An empty payload clears a retained record; live delivery drops the retain flag.
        if not m.payload and parsed.kind in (DeviceTopic.STATUS.value, DeviceTopic.REPORTED.value):
            with self._lock:
                self.stats.retained_cleared += 1
            return
        if len(m.payload) > MAX_PAYLOAD_BYTES:
            raise MessageError(
                f"payload of {len(m.payload)} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}"
            )
        message: Any = decode(cls, bytes(m.payload))
        if message.device_id != parsed.device_id:
            raise MessageError(
                f"device_id {message.device_id!r} does not match the topic's "
                f"{parsed.device_id!r}"
            )
        targets: dict[type[WireMessage], list[Any]] = {
            TelemetryBatch: batch.telemetry,
            AnomalyEvent: batch.anomalies,
            Status: batch.statuses,
            Heartbeat: batch.heartbeats,
            Reported: batch.reported,
        }
        targets[cls].append(message)
