"""Building the hub's paho client; nothing else in the hub constructs one."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.mqtt.lean import LeanClient

__all__ = ["RECONNECT_MAX_S", "SESSION_EXPIRY_S", "new_client"]


# How long the broker keeps the hub's session (subscriptions and queued messages) while the
# hub is away: MQTT 5 with an explicit expiry, as the agents do.
SESSION_EXPIRY_S = 7 * 24 * 3600
# Reconnect back-off: 1 s doubling up to this. The hub is one client, not a fleet, so it comes
# back quickly after a broker restart; a broker that stays down is not hammered.
RECONNECT_MAX_S = 16


def new_client(client_id: str, *, manual_ack: bool = False) -> LeanClient:
    """A paho client; setting its ``on_received`` takes the cheap receive path (:mod:`.lean`)."""
    client = LeanClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_S)
    return client
