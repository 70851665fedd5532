"""Helpers for hub tests: waiting on conditions, reading a row, a tiny real TFLite artifact,
MQTT clients, and a job's tick stalled past its lease (the fenced-lease tests)."""

from __future__ import annotations

import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import paho.mqtt.client as mqtt
from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.db.enrollments import enrolled_among, record_enrollment
from cloud_hub.db.ops_tables import JobLease
from cloud_hub.jobs.leased import LeasedWorker
from cloud_hub.service import Hub
from cloud_hub.training.artifact import (
    ArtifactVariant,
    ModelArtifact,
    ParityReport,
    TrainingSpec,
)
from shared.manifest import InputSpec, Normalization, Quantization, ScoreSpec
from shared.topics import DEVICE_WRITES, TopicAccess
from simulator.broker import Broker, Credential

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        event.wait(0.02)


def _row(hub: Hub, table: Any, key: Any) -> Any:
    """The row of ``table`` whose primary key is ``key`` (None if there is none)."""
    with Session(hub.engine) as session:
        return session.get(table, key)


@functools.cache
def tiny_tflite(window: int = 8, channels: int = 2) -> tuple[bytes, int]:
    """A real (tiny) dense autoencoder converted by the real TFLite converter."""
    from cloud_hub.training.tf_env import import_tensorflow

    tf = import_tensorflow()  # quiet: Keras would print "Saved artifact" into captured stdout

    n = window * channels
    model = tf.keras.Sequential([
        tf.keras.Input((n,)), tf.keras.layers.Dense(4, activation="relu"),
        tf.keras.layers.Dense(n),
    ])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    data = converter.convert()
    return bytes(data), len(data)


def tiny_artifact(
    *, agreement: float = 1.0, threshold: float = 0.5, channels: tuple[str, ...] = ("a", "b"),
    window: int = 8,
) -> ModelArtifact:
    tflite, float_size = tiny_tflite(window, len(channels))
    parity = ParityReport(
        quantization=Quantization.FLOAT32, decision_agreement=agreement, windows=200,
        score_correlation=0.999, max_score_error=0.01, mean_score_error=0.001,
        size_bytes=len(tflite), float_size_bytes=float_size, us_per_window=3.0,
        runtime="ai_edge_litert", min_agreement=0.99,
    )
    return ModelArtifact(
        spec=TrainingSpec(window=window, epochs=1, quantization=Quantization.FLOAT32),
        channels=list(channels),
        input=InputSpec(window=window, channels=list(channels)),
        normalization=Normalization(method="zscore", center=[0.0] * len(channels),
                                    scale=[1.0] * len(channels)),
        score=ScoreSpec(),
        threshold=threshold,
        threshold_method="quantile 0.999 of 200 validation scores × 1.0",
        tflite=tflite,
        float_size=float_size,
        parity=parity,
        training_rows=400,
        training_windows=393,
        validation={"loss": 0.1},
    )


def variant_artifact(*, threshold: float = 1.0, float32_passed: bool = True) -> ModelArtifact:
    """What quantization "auto" registers (issue 12): the agents' fixture autoencoder published
    as int8, with its float32 conversion kept as a variant (window 8, channels a and b, the
    normalization of ``tests.edge_agent.support.make_manifest``)."""
    from tests.edge_agent.support import CHANNELS, fixture_bytes

    int8, float32 = fixture_bytes("ae_int8_w8c2.tflite"), fixture_bytes("ae_float32_w8c2.tflite")

    def parity(mode: Quantization, data: bytes, agreement: float) -> ParityReport:
        return ParityReport(
            quantization=mode, decision_agreement=agreement, windows=200,
            score_correlation=0.999, max_score_error=0.01, mean_score_error=0.001,
            size_bytes=len(data), float_size_bytes=len(float32), us_per_window=3.0,
            runtime="ai_edge_litert", min_agreement=0.99)

    return ModelArtifact(
        spec=TrainingSpec(window=8, epochs=1, quantization="auto"),
        channels=list(CHANNELS),
        input=InputSpec(window=8, channels=list(CHANNELS)),
        normalization=Normalization(method="zscore", center=[0.0, 0.0], scale=[0.7, 0.7]),
        score=ScoreSpec(),
        threshold=threshold,
        threshold_method="fixed for the test",
        tflite=int8,
        float_size=len(float32),
        parity=parity(Quantization.INT8, int8, 1.0),
        training_rows=400,
        training_windows=393,
        validation={"loss": 0.1},
        variants={"float32": ArtifactVariant(
            tflite=float32,
            parity=parity(Quantization.FLOAT32, float32, 1.0 if float32_passed else 0.5))},
    )


def training_until_cancelled(started: threading.Event) -> Callable[..., ModelArtifact]:
    """A stand-in for run_training that sets ``started``, then waits (up to 30 s) for its job
    to be cancelled, and ends as a cancelled training does."""

    def run(readings: Any, channels: Any, spec: Any, *, cancel: threading.Event,
            **_: Any) -> ModelArtifact:
        from cloud_hub.training.errors import TrainingCancelled

        started.set()
        if cancel.wait(30):
            raise TrainingCancelled("training cancelled")
        raise AssertionError("cancel never arrived")

    return run


def stand_in_training(**overrides: Any) -> Callable[..., ModelArtifact]:
    """A stand-in for run_training with its signature: reports progress, honours cancel."""

    def run(readings: np.ndarray, channels: list[str], spec: TrainingSpec, *,
            segments: list[int] | None = None, labels: np.ndarray | None = None,
            progress: Any = None, cancel: threading.Event | None = None) -> ModelArtifact:
        from cloud_hub.training.artifact import TrainingProgress

        if readings.ndim != 2 or readings.shape[1] != len(channels):
            raise ValueError(f"readings shape {readings.shape} vs channels {channels}")
        for epoch in range(1, spec.epochs + 1):
            if cancel is not None and cancel.is_set():
                raise RuntimeError("cancelled")
            if progress is not None:
                progress(TrainingProgress(stage="fitting", epoch=epoch, epochs=spec.epochs,
                                          loss=1.0 / epoch, fraction=epoch / spec.epochs))
        if progress is not None:  # as the pipeline does: the last update has no epoch
            progress(TrainingProgress(stage="done", epochs=spec.epochs, fraction=1.0))
        artifact = tiny_artifact(channels=tuple(channels), window=spec.window, **overrides)
        return ModelArtifact(**{**artifact.__dict__, "training_rows": len(readings)})

    return run


_SUBSCRIBERS = itertools.count(1)
# Device ids the hub tests send data as; hubs made for a test have them enrolled.
TEST_DEVICES = tuple(f"pump-{i}" for i in range(10)) + ("d-1", "d-2")


def enroll_devices(hub: Hub, device_ids: tuple[str, ...] = TEST_DEVICES) -> None:
    """Enroll devices in the hub's registry, as ``cloud-hub devices enroll`` would (without
    broker credentials: hub tests send device data through one gateway identity)."""
    with Session(hub.engine) as session:
        fresh = sorted(set(device_ids) - enrolled_among(session, device_ids))
        if fresh:
            # No device rows: a device appears in listings once it has sent something.
            record_enrollment(session, fresh, broker_credential=False, device_rows=False)


class Subscriber:
    """A paho client collecting messages into a queue (for checking what the hub wrote); on a
    secure broker an observer identity that may only subscribe to ``topic``."""

    def __init__(self, broker: Broker, topic: str, client_id: str = "test-sub", *,
                 publish: tuple[str, ...] = (), protocol: int = mqtt.MQTTv311) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        # A fresh identity per subscriber: a test may open several with the same client id.
        name = f"{client_id}-{next(_SUBSCRIBERS)}"
        credential = broker.add_client(name, TopicAccess(publish=publish, subscribe=(topic,)))
        self.client = broker.client(credential, protocol=protocol)
        self.client.on_connect = lambda c, *_: (c.subscribe(topic, qos=1), self._connected.set())
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError("test subscriber could not connect")

    def collect(self, count: int, timeout: float = 10.0) -> dict[str, bytes]:
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"received {len(got)} of {count} messages: {sorted(got)}")
            try:
                m = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            got[m.topic] = bytes(m.payload)
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_under(broker: Broker, topic_filter: str, marker: str) -> dict[str, bytes]:
    """Every retained record under ``topic_filter`` as a brand-new subscriber sees it: a
    ``marker`` (a topic the filter matches) published after subscribing, not retained,
    arrives after all of them."""
    sub = Subscriber(broker, topic_filter, client_id="fresh-sub", publish=(marker,))
    try:
        publish_wait(sub.client, marker, b"end")
        got: dict[str, bytes] = {}
        while marker not in got:
            got.update(sub.collect(1))
        del got[marker]
        return got
    finally:
        sub.close()


def publisher_client(broker: Broker, client_id: str = "test-device") -> mqtt.Client:
    """A client that publishes device streams for any device id, as a gateway would: hub tests
    about parsing and storage send many devices' messages through one connection. (What a
    single device may do is tested with device credentials, in tests/integration.)"""
    topics = broker.topics
    gateway = TopicAccess(publish=tuple(topics.all_devices(t) for t in DEVICE_WRITES),
                          subscribe=())
    client = broker.client(broker.add_client(client_id, gateway), protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def publish_wait(client: mqtt.Client, topic: str, payload: bytes, qos: int = 1,
                 retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=qos, retain=retain)
    info.wait_for_publish(10)
    assert info.is_published(), f"publish to {topic} was not acknowledged"


class DeviceConnection:
    """A device's own MQTT connection (MQTT v5: refusals come back as reason codes)."""

    def __init__(self, broker: Broker, credential: Credential) -> None:
        self.connack: queue.Queue[str] = queue.Queue()
        self.dropped = threading.Event()
        self.client = broker.client(credential)
        self.client.reconnect_delay_set(60, 60)
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(str(rc))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.dropped.set()
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes) -> str:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        return "sent" if info.is_published() else "not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connack(broker: Broker, credential: Credential) -> str:
    """What the broker answers a connection with this credential."""
    device = DeviceConnection(broker, credential)
    try:
        answer: str = device.connack.get(timeout=10)
        return answer
    finally:
        device.close()


LONG_TTL_S = 60.0  # never expires on its own during a test: the test ends it


class _Stall:
    """Stalls the first statement of one engine that starts with ``sql`` (after it ran, with
    ``after``), until :meth:`go`; ``reached`` says it is stalled there."""

    def __init__(self, engine: Engine, sql: str, *, after: bool = False) -> None:
        self.reached, self._go, self._armed = threading.Event(), threading.Event(), True
        self._sql = sql
        event.listen(engine, "after_cursor_execute" if after else "before_cursor_execute",
                     self._hook)

    def _hook(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self._armed and statement.lstrip().upper().startswith(self._sql):
            self._armed = False
            self.reached.set()
            assert self._go.wait(60), "the test never let the stalled tick go on"

    def go(self) -> None:
        self._go.set()


def _two_workers(name: str, engines: tuple[Engine, Engine], ticks: tuple[Any, Any]
                 ) -> tuple[LeasedWorker, LeasedWorker]:
    """The job ``name`` as two hub processes run it: hub-a's and hub-b's workers."""
    a, b = (LeasedWorker(e, name=name, tick=t, interval_s=0.05, lease_ttl_s=LONG_TTL_S,
                         holder=h) for e, t, h in zip(engines, ticks, ("hub-a", "hub-b"),
                                                      strict=True))
    return a, b


def _end_lease(engine: Engine, name: str) -> None:
    """What the ttl passing does to the stalled holder's lease."""
    with Session(engine) as session:
        session.exec(update(JobLease).where(JobLease.name == name)  # type: ignore[arg-type]
                     .values(expires_at=0.0))
        session.commit()
