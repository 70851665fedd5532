"""Building and connecting the hub's paho clients; nothing else in the hub constructs one."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["MqttConnectError", "connect_and_wait", "new_client"]


class MqttConnectError(RuntimeError):
    """The broker could not be reached or refused the connection within the timeout."""


# How long the broker keeps the hub's session (subscriptions and queued messages) while the
# hub is away: MQTT 5 with an explicit expiry, as the agents do.
SESSION_EXPIRY_S = 7 * 24 * 3600


def new_client(client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    # Retry every second: the hub is one client, not a fleet, and the sooner it is back the
    # fewer messages the agents have to send again (see HubStatus).
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    return client


def connect_and_wait(
    client: mqtt.Client, host: str, port: int, *, keepalive: int, connected: threading.Event,
    timeout: float, persistent: bool = False,
) -> None:
    """Start the network loop and wait until ``connected`` is set by the on_connect callback;
    ``persistent``: resume the session the broker kept (subscriptions, queued messages)."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
    try:
        client.connect_async(
            host, port, keepalive=keepalive, clean_start=not persistent, properties=props
        )
    except (OSError, ValueError) as exc:
        raise MqttConnectError(f"MQTT broker {host}:{port}: {exc}") from exc
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise MqttConnectError(f"MQTT broker {host}:{port} did not accept us within {timeout}s")
