"""Building the hub's paho client; nothing else in the hub constructs one."""

from __future__ import annotations

from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.mqtt.lean import LeanClient
from shared.tls import client_context

__all__ = ["RECONNECT_MAX_S", "SESSION_EXPIRY_S", "MqttAuth", "new_client"]


# How long the broker keeps the hub's session (subscriptions and queued messages) while the
# hub is away: MQTT 5 with an explicit expiry, as the agents do.
SESSION_EXPIRY_S = 7 * 24 * 3600
# Reconnect back-off: 1 s doubling up to this. The hub is one client, not a fleet, so it comes
# back quickly after a broker restart; a broker that stays down is not hammered.
RECONNECT_MAX_S = 16


@dataclass(frozen=True)
class MqttAuth:
    """How the hub logs in: its password (the username is the connection's client id) and
    TLS with ``ca_file`` (the system CAs when None). All unset: an anonymous plain broker."""

    password: str | None = None
    tls: bool = False
    ca_file: str | None = None

    def apply(self, client: mqtt.Client, username: str) -> None:
        if self.password is not None:
            client.username_pw_set(username, self.password)
        if self.tls:
            client.tls_set_context(client_context(self.ca_file))


def new_client(
    client_id: str, *, manual_ack: bool = False, auth: MqttAuth | None = None
) -> LeanClient:
    """A paho client; setting its ``on_received`` takes the cheap receive path (:mod:`.lean`)."""
    client = LeanClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_S)
    if auth is not None:
        auth.apply(client, client_id)
    return client
