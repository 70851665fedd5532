"""Building and connecting the hub's paho clients; nothing else in the hub constructs one."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["MqttConnectError", "connect_and_wait", "new_client"]


class MqttConnectError(RuntimeError):
    """The broker could not be reached or refused the connection within the timeout."""


def new_client(client_id: str, *, persistent: bool, manual_ack: bool = False) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


def connect_and_wait(
    client: mqtt.Client, host: str, port: int, *, keepalive: int, connected: threading.Event,
    timeout: float,
) -> None:
    """Start the network loop and wait until ``connected`` is set by the on_connect callback."""
    try:
        client.connect_async(host, port, keepalive=keepalive)
    except (OSError, ValueError) as exc:
        raise MqttConnectError(f"MQTT broker {host}:{port}: {exc}") from exc
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise MqttConnectError(f"MQTT broker {host}:{port} did not accept us within {timeout}s")
