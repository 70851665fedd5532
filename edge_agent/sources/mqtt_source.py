"""Readings from an MQTT topic on a local broker, for devices whose sensors already publish.

Options: ``topic`` (required, may hold wildcards), ``channels`` (required), ``host``
(127.0.0.1), ``port`` (1883), ``client_id`` (default ``edgeloop-source-<pid>``), ``username``,
``password``, ``tls`` (false) and ``tls_ca_file``. Payloads are JSON objects as for the stdin
source.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from typing import Any

from edge_agent.comms.mqtt import InboundMessage, LinkSettings, MqttLink
from edge_agent.sources.base import (
    BadRowCounter,
    Reading,
    SensorSource,
    SourceError,
    channel_list,
    drain,
    reading_from_json,
    refuse_unknown_options,
)

__all__ = ["MqttSource", "create_source"]

log = logging.getLogger(__name__)
_KNOWN = {"topic", "channels", "host", "port", "client_id", "username", "password", "tls",
          "tls_ca_file"}


class MqttSource(SensorSource):
    def __init__(self, link_settings: LinkSettings, topic: str, channels: list[str]) -> None:
        self.channels = list(channels)
        self.topic = topic
        self._inbound: queue.Queue[InboundMessage] = queue.Queue()
        self._link = MqttLink(link_settings, inbound=self._inbound)
        self._link.subscribe(topic, qos=1)
        self._link.start()
        self._bad = BadRowCounter(log, f"mqtt source {topic}")

    @property
    def bad_readings(self) -> int:  # type: ignore[override]
        return self._bad.count

    def read(self, timeout: float) -> list[Reading]:
        out: list[Reading] = []
        for message in drain(self._inbound, timeout):
            try:
                out.append(reading_from_json(message.payload, self.channels, time.time()))
            except ValueError as exc:
                self._bad.skip(f"message on {message.topic}", str(exc))
        return out

    def close(self) -> None:
        self._link.stop(timeout=2.0)


def create_source(options: dict[str, Any]) -> MqttSource:
    refuse_unknown_options(options, _KNOWN, "mqtt")
    topic = options.get("topic")
    if not isinstance(topic, str) or not topic:
        raise SourceError(f"source.options.topic is required for type 'mqtt', got {topic!r}")
    port = options.get("port", 1883)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SourceError(f"source.options.port must be a TCP port, got {port!r}")
    settings = LinkSettings(
        client_id=str(options.get("client_id", f"edgeloop-source-{os.getpid()}")),
        host=str(options.get("host", "127.0.0.1")),
        port=port,
        username=options.get("username"),
        password=options.get("password"),
        tls=bool(options.get("tls", False)),
        tls_ca_file=options.get("tls_ca_file"),
        clean_start=True,
        session_expiry_s=0,
        reconnect_initial_s=0.5,
        reconnect_max_s=10.0,
    )
    return MqttSource(settings, topic, channel_list(options, "mqtt"))
