"""Publishing from the hub: retained manifests, chunks, trust lists and desired state per device.

Every publish is QoS 1 over the hub's one connection (:mod:`cloud_hub.mqtt.connection`) and
waits for its PUBACK with a timeout, so "published" in the registry means the broker holds it.
"""

from __future__ import annotations

import logging

from cloud_hub.mqtt.connection import HubConnection, PublishError
from shared.codec import split
from shared.manifest import Manifest
from shared.messages import Desired, encode
from shared.topics import Topics

__all__ = ["Publisher", "PublishError"]

log = logging.getLogger(__name__)


class Publisher:
    """Writes the hub's retained state through its connection."""

    def __init__(self, connection: HubConnection, *, timeout: float = 30.0) -> None:
        self._connection = connection
        self.topics: Topics = connection.topics
        self.timeout = timeout

    @property
    def connected(self) -> bool:
        return self._connection.connected

    def _publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        self._connection.publish_all(messages, timeout=self.timeout)

    def publish_model(self, manifest: Manifest, tflite: bytes, *, as_variant: bool = False
                      ) -> None:
        """Retain the chunks first, then the manifest, so a manifest never points at nothing.
        ``as_variant``: at the topics of the version's variant ``manifest.quantization``
        (another quantization kept beside the published one), not at the version's own."""
        chunks = split(tflite, manifest.chunk_size)
        if len(chunks) != manifest.chunks.count:
            raise PublishError(
                f"{manifest.name} v{manifest.version}: {len(chunks)} chunks but the manifest "
                f"lists {manifest.chunks.count}"
            )
        name, version = manifest.name, manifest.version
        variant = manifest.quantization.value if as_variant else None
        self._publish_all(
            [(self.topics.chunk(name, version, i, variant), c) for i, c in enumerate(chunks)]
        )
        self._publish_all([(self.topics.manifest(name, version, variant), manifest.to_bytes())])
        log.info("published %s v%d%s: %d bytes in %d chunks", name, version,
                 f" variant {variant}" if variant else "", len(tflite), len(chunks))

    def clear_model(self, name: str, version: int, chunk_count: int,
                    variant: str | None = None) -> None:
        """Empty retained payloads delete the manifest and every chunk from the broker."""
        messages = [(self.topics.manifest(name, version, variant), b"")]
        messages += [(self.topics.chunk(name, version, i, variant), b"")
                     for i in range(chunk_count)]
        self._publish_all(messages)
        log.info("cleared retained %s v%d%s (%d chunks)", name, version,
                 f" variant {variant}" if variant else "", chunk_count)

    def publish_trust_lists(self, lists: list[tuple[int, bytes]]) -> None:
        """Retain signed trust lists, one topic per version (agents walk them in order)."""
        self._publish_all([(self.topics.trust(version), payload) for version, payload in lists])

    def publish_desired(self, desired: Desired) -> None:
        self._publish_all([(self.topics.desired(desired.device_id), encode(desired))])

    def publish_desired_many(self, desired: list[Desired]) -> None:
        self._publish_all([(self.topics.desired(d.device_id), encode(d)) for d in desired])
