"""The hub's presence: a retained :class:`~shared.messages.HubStatus` per hub process.

Each connection gets a new session id, which starts with the hub process's start time (12 hex
digits of milliseconds), so that of two hubs with one client id each can tell which is the
older; the offline record is the connection's last will; the
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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.messages import DeviceStatus, HubStatus, MessageError, decode, encode
from shared.packed import ENCODINGS, ENCODINGS_PROPERTY
from shared.topics import Topics

__all__ = ["HubPresence", "running_hub", "session_started_at"]

log = logging.getLogger(__name__)


class HubPresence:
    """Session id and presence records of one hub connection."""

    def __init__(self, topics: Topics, client_id: str, *, refresh_s: float = 30.0,
                 started_at: float | None = None) -> None:
        self.topics = topics
        self.client_id = client_id
        self.refresh_s = refresh_s
        self.started_at = time.time() if started_at is None else started_at
        self.session = ""
        self.topic = topics.hub_status(client_id)
        self._announced_at: float | None = None

    def new_session(self) -> None:
        self.session = f"{int(self.started_at * 1000):012x}{uuid.uuid4().hex[:20]}"

    def record(self, state: DeviceStatus) -> bytes:
        return encode(HubStatus(device_id=self.client_id, state=state, session=self.session,
                                at=time.time()))

    def properties(self) -> Properties:
        """What the online record says beside its payload: the telemetry encodings this hub
        reads (:data:`shared.packed.ENCODINGS_PROPERTY`)."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [(ENCODINGS_PROPERTY, " ".join(ENCODINGS))]
        return props

    def announced(self) -> None:
        self._announced_at = time.monotonic()

    def withdrawn(self) -> None:
        self._announced_at = None

    def refresh_due(self) -> bool:
        return (self._announced_at is not None
                and time.monotonic() - self._announced_at >= self.refresh_s)


def session_started_at(session: str) -> float | None:
    """When the hub process that announced ``session`` started (epoch seconds), or None when the
    session does not carry a plausible start time."""
    try:
        started = int(session[:12], 16) / 1000.0
    except ValueError:
        return None
    return started if 1.5e9 < started < time.time() + 86400 else None


def running_hub(
    client: mqtt.Client, host: str, port: int, topics: Topics, client_id: str, *,
    fresh_s: float, timeout: float = 5.0, not_session: str | None = None,
) -> HubStatus | None:
    """The online record of a hub that runs with ``client_id`` now, or None (also when the
    record is of session ``not_session``: this hub's own).

    ``client`` is a throwaway client with its own id (connecting with ``client_id`` itself would
    disconnect the running hub). A record whose ``at`` is older than ``fresh_s`` is a hub that
    died without its will reaching the broker: logged, and not counted as running. Raises
    OSError when the broker cannot be reached or refuses the connection."""
    got: list[bytes] = []
    refused: list[str] = []
    done = threading.Event()
    topic = topics.hub_status(client_id)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            refused.append(str(rc))
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
    if refused:
        raise OSError(f"the broker refused the connection: {refused[0]}")
    if not got or not got[-1]:
        return None
    try:
        status = decode(HubStatus, got[-1])
    except MessageError as exc:
        log.warning("the presence record on %s is not valid (%s); ignoring it", topic, exc)
        return None
    if status.state != DeviceStatus.ONLINE or status.session == not_session:
        return None
    age = time.time() - status.at
    if age > fresh_s:
        log.warning("a hub with client id %s announced itself %.0f s ago and never refreshed "
                    "or withdrew it: taking its place", client_id, age)
        return None
    return status
