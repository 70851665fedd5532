"""The hub's presence: a retained :class:`~shared.messages.HubStatus` per hub process.

Each connection gets a new session id; the offline record is the connection's last will; the
online record is published once the broker has granted every subscription and refreshed every
``refresh_s`` while the hub runs, so that an online record whose ``at`` stopped moving belongs to
a hub that is gone. Agents show an operator whether any hub listens under their prefix, and a
second ``cloud-hub serve`` with the same client id reads the record to refuse to start
(:func:`running_hub`), instead of knocking the running hub off the broker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt

from shared.messages import DeviceStatus, HubStatus, MessageError, decode, encode
from shared.topics import Topics

__all__ = ["HubPresence", "running_hub"]

log = logging.getLogger(__name__)


class HubPresence:
    """Session id and presence records of one hub connection."""

    def __init__(self, topics: Topics, client_id: str, *, refresh_s: float = 30.0) -> None:
        self.topics = topics
        self.client_id = client_id
        self.refresh_s = refresh_s
        self.session = ""
        self.topic = topics.hub_status(client_id)
        self._announced_at: float | None = None

    def new_session(self) -> None:
        self.session = uuid.uuid4().hex

    def record(self, state: DeviceStatus) -> bytes:
        return encode(HubStatus(device_id=self.client_id, state=state, session=self.session,
                                at=time.time()))

    def announced(self) -> None:
        self._announced_at = time.monotonic()

    def withdrawn(self) -> None:
        self._announced_at = None

    def refresh_due(self) -> bool:
        return (self._announced_at is not None
                and time.monotonic() - self._announced_at >= self.refresh_s)


def running_hub(
    client: mqtt.Client, host: str, port: int, topics: Topics, client_id: str, *,
    fresh_s: float, timeout: float = 5.0,
) -> HubStatus | None:
    """The online record of a hub that runs with ``client_id`` now, or None.

    ``client`` is a throwaway client with its own id (connecting with ``client_id`` itself would
    disconnect the running hub). A record whose ``at`` is older than ``fresh_s`` is a hub that
    died without its will reaching the broker: logged, and not counted as running. Raises
    OSError when the broker cannot be reached."""
    got: list[bytes] = []
    done = threading.Event()
    topic = topics.hub_status(client_id)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            done.set()
            return
        c.subscribe(topic, 1)

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        # A retained record arrives right after the SUBACK; give it a moment.
        threading.Timer(0.5, done.set).start()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        got.append(bytes(message.payload))
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if not got or not got[-1]:
        return None
    try:
        status = decode(HubStatus, got[-1])
    except MessageError as exc:
        log.warning("the presence record on %s is not valid (%s); ignoring it", topic, exc)
        return None
    if status.state != DeviceStatus.ONLINE:
        return None
    age = time.time() - status.at
    if age > fresh_s:
        log.warning("a hub with client id %s announced itself %.0f s ago and never refreshed "
                    "or withdrew it: taking its place", client_id, age)
        return None
    return status
