"""Publishing from the hub: retained manifests and chunks, retained desired state per device.

Every publish is QoS 1 and waits for its PUBACK with a timeout, so "published" in the registry
means the broker holds it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from cloud_hub.mqtt.client import connect_and_wait, new_client
from shared.codec import split
from shared.manifest import Manifest
from shared.messages import Desired, encode
from shared.topics import Topics

__all__ = ["Publisher", "PublishError"]

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The broker did not acknowledge a publish within the timeout."""


class Publisher:
    """One paho connection that the hub uses to write retained state."""

    def __init__(
        self, *, host: str, port: int, topics: Topics, client_id: str = "edgeloop-hub-pub",
        keepalive: int = 30, timeout: float = 30.0,
    ) -> None:
        self._host, self._port, self._keepalive = host, port, keepalive
        self.topics = topics
        self.timeout = timeout
        self._connected = threading.Event()
        self._client = new_client(client_id)
        self._client.max_inflight_messages_set(20)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, timeout: float = 10.0) -> None:
        connect_and_wait(
            self._client, self._host, self._port, keepalive=self._keepalive,
            connected=self._connected, timeout=timeout, persistent=False,
        )

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        if not self._connected.wait(self.timeout):
            raise PublishError(f"not connected to the MQTT broker within {self.timeout}s")
        infos = [self._client.publish(t, p, qos=1, retain=True) for t, p in messages]
        deadline = time.monotonic() + self.timeout
        for (topic, _), info in zip(messages, infos, strict=True):
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            except (RuntimeError, ValueError) as exc:
                raise PublishError(f"publish to {topic} failed: {exc}") from exc
            if not info.is_published():
                raise PublishError(f"broker did not acknowledge {topic} within {self.timeout}s")

    def publish_model(self, manifest: Manifest, tflite: bytes) -> None:
        """Retain the chunks first, then the manifest, so a manifest never points at nothing."""
        chunks = split(tflite, manifest.chunk_size)
        if len(chunks) != manifest.chunks.count:
            raise PublishError(
                f"{manifest.name} v{manifest.version}: {len(chunks)} chunks but the manifest "
                f"lists {manifest.chunks.count}"
            )
        name, version = manifest.name, manifest.version
        self._publish_all(
            [(self.topics.chunk(name, version, i), c) for i, c in enumerate(chunks)]
        )
        self._publish_all([(self.topics.manifest(name, version), manifest.to_bytes())])
        log.info("published %s v%d: %d bytes in %d chunks", name, version, len(tflite),
                 len(chunks))

    def clear_model(self, name: str, version: int, chunk_count: int) -> None:
        """Empty retained payloads delete the manifest and every chunk from the broker."""
        messages = [(self.topics.manifest(name, version), b"")]
        messages += [(self.topics.chunk(name, version, i), b"") for i in range(chunk_count)]
        self._publish_all(messages)
        log.info("cleared retained %s v%d (%d chunks)", name, version, chunk_count)

    def publish_desired(self, desired: Desired) -> None:
        self._publish_all([(self.topics.desired(desired.device_id), encode(desired))])

    def publish_desired_many(self, desired: list[Desired]) -> None:
        self._publish_all([(self.topics.desired(d.device_id), encode(d)) for d in desired])
