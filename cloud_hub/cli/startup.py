"""What ``cloud-hub serve`` claims before it connects to anything, so that a second hub started
with the same settings stops at once with a clear message instead of knocking the running one
off the broker (issue 11 defect 4).

In this order: the data directory (an exclusive lock on ``DATA_DIR/hub.lock``), the HTTP port
(bound here and handed to uvicorn), then the MQTT client id: if another hub announces itself
online under it (:func:`~cloud_hub.mqtt.presence.running_hub`, asked with a throwaway client
id), this one refuses. A broker that cannot be reached does not stop the hub (it starts and
connects later). Two hubs started at the same instant can both pass the check; then
:class:`ClaimWatch` settles it: when the hub's session is taken over, it looks at who holds the
client id now, and the younger of the two stops.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import paho.mqtt.client as mqtt

from cloud_hub.core.config import Settings
from cloud_hub.identity.roles import HUB_CHECK_SUFFIX
from cloud_hub.mqtt.client import MqttAuth, new_client
from cloud_hub.mqtt.connection import HubConnection
from cloud_hub.mqtt.presence import running_hub, session_started_at
from shared.timefmt import iso_time

__all__ = ["ClaimWatch", "DataDirLock", "StartRefused", "bind_http", "check_client_id"]

log = logging.getLogger(__name__)
_FRESH_REFRESHES = 3  # a presence record not refreshed for this many intervals is a dead hub


class StartRefused(RuntimeError):
    """Something this hub needs is held by another process; the text says what and what to do."""


class DataDirLock:
    """An exclusive lock on ``data_dir/hub.lock``, held while the hub runs (released by the
    kernel if the process dies, so a crash leaves nothing to clean up)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "hub.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StartRefused(
                f"the data directory {self.path.parent} is in use by another cloud-hub serve "
                f"(pid {holder}); stop it, or give this hub its own EDGELOOP_DATA_DIR") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


def bind_http(host: str, port: int) -> socket.socket:
    """A listening socket for the REST API (port 0: any free one), or :class:`StartRefused`."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartRefused(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        taken = " (another cloud-hub serve?)" if exc.errno == 98 else ""
        raise StartRefused(f"cannot listen on {host}:{port}: {exc.strerror}{taken}; choose "
                           f"another EDGELOOP_HTTP_PORT") from None
    return sock


def _probe_client(settings: Settings) -> mqtt.Client:
    """A throwaway client to look for another hub with this client id. On a secure broker it is
    the hub's own ``<id>-check`` identity (it may read the hub's status record, nothing else)."""
    if settings.mqtt_password is None:
        return new_client(f"{settings.mqtt_client_id[:48]}-check-{os.getpid()}")
    auth = MqttAuth(password=settings.mqtt_password, tls=settings.mqtt_tls,
                    ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None)
    return new_client(settings.mqtt_client_id + HUB_CHECK_SUFFIX, auth=auth)


def check_client_id(settings: Settings, *, timeout: float = 5.0) -> None:
    """Refuse (:class:`StartRefused`) when a hub is online with this hub's MQTT client id."""
    fresh_s = _FRESH_REFRESHES * settings.hub_status_refresh_s
    try:
        other = running_hub(_probe_client(settings),
                            settings.mqtt_host, settings.mqtt_port, settings.topics,
                            settings.mqtt_client_id, fresh_s=fresh_s, timeout=timeout)
    except OSError as exc:
        log.warning("cannot ask the broker at %s:%d whether a hub with client id %s runs (%s); "
                    "starting, and connecting when the broker is up", settings.mqtt_host,
                    settings.mqtt_port, settings.mqtt_client_id, exc)
        return
    if other is not None:
        since = session_started_at(other.session)
        raise StartRefused(
            f"another hub is running with MQTT client id {settings.mqtt_client_id!r} on "
            f"{settings.mqtt_host}:{settings.mqtt_port} (session {other.session}"
            f"{', started ' + iso_time(since) if since else ''}, last seen "
            f"{time.time() - other.at:.0f} s ago); two hubs with one client id would take the "
            f"session from each other: stop it, or give this hub its own "
            f"EDGELOOP_MQTT_CLIENT_ID")


class ClaimWatch:
    """While the hub runs: when its session is taken over, find out by whom, and call
    ``on_lost`` with the reason if an older hub holds the client id (the younger one yields)."""

    def __init__(self, settings: Settings, connection: HubConnection,
                 on_lost: Callable[[str], None], *, poll_s: float = 0.5) -> None:
        self._settings = settings
        self._connection = connection
        self._on_lost = on_lost
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._seen = connection.takeovers
        self._thread = threading.Thread(target=self._run, name="hub-claim", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            if self._connection.takeovers == self._seen:
                continue
            self._seen = self._connection.takeovers
            try:
                reason = self._older_holder()
            except OSError as exc:
                log.warning("cannot check who took this hub's session: %s", exc)
                continue
            if reason is not None:
                self._on_lost(reason)
                return

    def _older_holder(self) -> str | None:
        s = self._settings
        presence = self._connection.presence
        other = running_hub(_probe_client(s), s.mqtt_host,
                            s.mqtt_port, s.topics, s.mqtt_client_id,
                            fresh_s=_FRESH_REFRESHES * s.hub_status_refresh_s,
                            not_session=presence.session)
        if other is None:
            return None
        since = session_started_at(other.session)
        if since is None or since >= presence.started_at:
            return None  # a younger hub: it yields, this one takes the session back
        return (f"another hub with MQTT client id {s.mqtt_client_id!r}, running since "
                f"{iso_time(since)} (session {other.session}), holds the session; this younger "
                f"one stops: give each hub its own EDGELOOP_MQTT_CLIENT_ID")
