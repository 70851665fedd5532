"""Start a private mosquitto on a free loopback port: the secure configuration unless asked.

Used by the demo, the scenarios, the benchmarks and the tests: none of them ever relies on a
broker that something else started. Secure (the default) means what production runs: TLS with
a CA made for this broker, no anonymous clients, and one identity per client in mosquitto's
dynamic-security plugin, with its own role (built from :class:`shared.topics.TopicAccess`, so
the ACL follows the topic prefix) and its client id bound to it. ``Broker(secure=False)`` is the
anonymous plain-TCP broker, for the rare test that is about something else entirely.

Callers get what a client needs from the broker object: :attr:`Broker.ca_file`,
:meth:`Broker.add_device` (a device's credential), :meth:`Broker.add_hub` (the hub's),
:meth:`Broker.client` (a paho client set up with TLS and a credential) and
:meth:`Broker.agent_mqtt` / :meth:`Broker.hub_settings` (the agent's ``[mqtt]`` section, the
hub's settings). Identities added before :meth:`Broker.start` go straight into the plugin's
file (1,000 devices in well under a second); later ones through ``$CONTROL``. The files it runs
from are written by :mod:`simulator.broker_files`; its port comes from :mod:`simulator.ports`.

Standard library, ``cryptography`` and paho only, so the minimal edge venv can use it.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cloud_hub.identity.dynsec import (
    Credential,
    DynsecClient,
    Identity,
    client_commands,
    new_password,
    remove_commands,
)
from cloud_hub.identity.roles import (
    broker_admin_identity,
    device_identity,
    device_rolename,
    hub_identities,
)
from shared.tls import client_context
from shared.topics import TopicAccess, Topics
from simulator.broker_files import (
    owned_temp_dir,
    persistence_dir,
    write_certificates,
    write_conf,
    write_identities,
)
from simulator.ports import free_port
from simulator.process import log_tail, start_child, terminate

__all__ = [
    "Broker",
    "BrokerError",
    "Credential",
    "find_mosquitto",
    "repo_mosquitto_conf",
]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """mosquitto could not be found or did not start."""


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


def repo_mosquitto_conf() -> Path:
    here = Path(__file__).resolve().parent.parent / "mosquitto.conf"
    if not here.exists():
        raise BrokerError(f"mosquitto.conf not found next to the packages ({here})")
    return here


class Broker:
    """A mosquitto process; ``stop()`` and ``start()`` again keep the same port, persistence
    and identities."""

    def __init__(self, port: int | None = None, workdir: Path | None = None, *,
                 secure: bool = True, topics: Topics | None = None,
                 settings: str = "") -> None:
        """``settings``: mosquitto.conf lines after the repository's, which they override
        (a test's small queue cap, a short ``sys_interval``)."""
        self.port = port or free_port()
        self.settings = settings
        self.host = "127.0.0.1"
        self.secure = secure
        self.topics = topics or Topics()
        self._own_dir = workdir is None
        self.workdir = workdir or owned_temp_dir("edgeloop-mosquitto-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = persistence_dir()
        # In the broker's own folder: started as root, it runs as ``mosquitto`` from the start
        # (see start()), and a caller's workdir may be closed to that user.
        self.conf_path = self.data_dir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.dynsec_path = self.data_dir / "dynamic-security.json"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._pending: list[Identity] = []  # added while stopped: written at the next start
        self._roles: set[str] = set()
        self._control: DynsecClient | None = None
        self._clients: dict[str, Credential] = {}
        self._admin = broker_admin_identity()
        self.ca_file: Path | None = None
        if secure:
            self.ca_file = write_certificates(self.workdir, self.data_dir)
            self._pending.append(self._admin)
        self._write_conf()

    # -- what clients need ---------------------------------------------------------------
    @property
    def transport(self) -> str:
        return "tls" if self.secure else "tcp"

    @property
    def auth(self) -> str:
        return "dynsec-per-device" if self.secure else "anonymous"

    @property
    def admin(self) -> Credential:
        """The harness's own broker-admin credential (dynamic-security commands only)."""
        return self._admin.credential

    def add_identities(self, identities: Iterable[Identity]) -> None:
        """Give these identities to the broker: into its file while it is stopped, through
        ``$CONTROL`` while it runs. Nothing to do on an anonymous broker."""
        identities = list(identities)
        if not self.secure or not identities:
            return
        with self._lock:
            if not self.running:
                self._pending.extend(identities)
                return
            control = self._admin_client()
            control.execute(client_commands(identities, existing_roles=self._roles))
            self._roles.update(i.rolename for i in identities)

    def add_device(self, device_id: str) -> Credential:
        """A new credential for ``device_id`` (a device's own role, client id bound)."""
        return self.add_devices([device_id])[device_id]

    def add_devices(self, device_ids: Iterable[str]) -> dict[str, Credential]:
        """Credentials for these devices; a device the harness already made keeps its own."""
        with self._lock:
            wanted = list(dict.fromkeys(device_ids))
            identities = [device_identity(self.topics, d) for d in wanted
                          if d not in self._clients]
            self.add_identities(identities)
            for i in identities:
                self._clients[i.credential.username] = i.credential
            return {d: self._clients[d] if self.secure else Credential(d, "", d)
                    for d in wanted}

    def add_hub(self, hub_id: str) -> Credential:
        """The credential of a hub whose client id is ``hub_id`` (also ``<id>-admin``, the
        hub's broker-admin connection, with the same password)."""
        with self._lock:
            if hub_id in self._clients:
                return self._clients[hub_id]
            identities = hub_identities(self.topics, hub_id, new_password())
            self.add_identities(identities)
            if self.secure:
                self._clients[hub_id] = identities[0].credential
            return identities[0].credential

    def add_client(self, username: str, access: TopicAccess, *,
                   client_id: str | None = None) -> Credential:
        """Any other identity (an observer, a sensor feeding an MQTT source): its own role
        with exactly ``access``, client id bound (to ``username`` unless given). Asking again
        for the same username gives the same credential."""
        with self._lock:
            if username in self._clients:
                return self._clients[username]
            credential = Credential(username, new_password(), client_id or username)
            self.add_identities([Identity(credential, f"client:{username}", access)])
            if self.secure:
                self._clients[username] = credential
            return credential

    def revoke(self, username: str, rolename: str | None = None) -> None:
        """Delete an identity: the broker disconnects it at once and refuses it from then on."""
        if not self.secure:
            raise BrokerError("an anonymous broker has no identities to revoke")
        role = rolename or device_rolename(username)
        with self._lock:
            self._admin_client().execute(remove_commands(username, role),
                                         ignore=("not found",))
            self._roles.discard(role)
            self._clients.pop(username, None)

    def client(self, credential: Credential | None = None, *, client_id: str | None = None,
               protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
               **kwargs: Any) -> mqtt.Client:
        """A paho client (not connected) with this broker's TLS settings and ``credential``;
        call ``connect(broker.host, broker.port)`` on it as usual."""
        cid = client_id or (credential.client_id if credential else "")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol,
                             **kwargs)
        if credential is not None and self.secure:
            client.username_pw_set(credential.username, credential.password)
        if self.ca_file is not None:
            client.tls_set_context(client_context(str(self.ca_file)))
        return client

    def agent_mqtt(self, credential: Credential | None) -> dict[str, Any]:
        """The agent config's ``[mqtt]`` keys for connecting here as ``credential``."""
        section: dict[str, Any] = {"host": self.host, "port": self.port,
                                   "topic_prefix": self.topics.prefix}
        if self.secure:
            if credential is None:
                raise BrokerError("a secure broker needs a credential (broker.add_device)")
            section.update(tls=True, tls_ca_file=str(self.ca_file),
                           username=credential.username, password=credential.password)
        return section

    def device_auth(self, device_id: str) -> dict[str, Any]:
        """The ``[mqtt]`` keys that make ``device_id`` log in here (TLS, its own username and
        password), without host and port: for a fleet whose devices may go through a proxy."""
        if not self.secure:
            return {}
        credential = self.add_device(device_id)
        return {"tls": True, "tls_ca_file": str(self.ca_file),
                "username": credential.username, "password": credential.password}

    def agent_mqtt_toml(self, credential: Credential | None) -> str:
        """:meth:`agent_mqtt` as the lines of a TOML ``[mqtt]`` section (without its header)."""
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.agent_mqtt(credential).items())

    def hub_settings(self, hub_id: str) -> dict[str, Any]:
        """The hub's MQTT settings (``Settings`` fields) for a hub with client id ``hub_id``;
        creates its identities on a secure broker."""
        settings: dict[str, Any] = {"mqtt_host": self.host, "mqtt_port": self.port,
                                    "mqtt_client_id": hub_id, "topic_prefix": self.topics.prefix}
        if self.secure:
            credential = self.add_hub(hub_id)
            settings.update(mqtt_password=credential.password, mqtt_tls=True,
                            mqtt_ca_file=str(self.ca_file))
        return settings

    def hub_env(self, hub_id: str) -> dict[str, str]:
        """:meth:`hub_settings` as the ``EDGELOOP_*`` environment of a hub process."""
        return {f"EDGELOOP_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in self.hub_settings(hub_id).items()}

    # -- the process ----------------------------------------------------------------------
    def _write_conf(self) -> None:
        write_conf(self.conf_path, repo_mosquitto_conf().read_text(), port=self.port,
                   host=self.host, data_dir=self.data_dir, dynsec_file=self.dynsec_path,
                   secure=self.secure, settings=self.settings)

    def _write_identities(self) -> None:
        """Put identities added while stopped into the plugin's file (merging with what the
        broker saved there, e.g. devices a hub enrolled at run time)."""
        if not self._pending:
            return
        write_identities(self.dynsec_path, self._pending)
        self._roles.update(i.rolename for i in self._pending)
        self._pending.clear()

    def _admin_client(self) -> DynsecClient:
        if self._control is None:
            self._control = DynsecClient(host=self.host, port=self.port,
                                         credential=self._admin.credential,
                                         ca_file=self.ca_file).start()
        return self._control

    def start(self, timeout: float = 10.0) -> Broker:
        if self.running:
            return self
        with self._lock:
            if self.secure:
                self._write_identities()
            log_fh = self.log_path.open("ab")
            # Tied to this process (it stops when a killed test run dies), and so started as
            # the user it would switch to by itself: switching would undo the tie.
            self._proc = start_child(
                [find_mosquitto(), "-c", str(self.conf_path)],
                user="mosquitto", stdout=log_fh, stderr=subprocess.STDOUT,
            )
            log_fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    log.debug("mosquitto listening on %s:%d (%s)", self.host, self.port,
                              self.transport)
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.stop()
            self._control = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, so persistence is saved)."""
        self._close_control()
        if self._proc is None:
            return
        terminate(self._proc, timeout, "mosquitto")
        self._proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        self._close_control()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def log_tail(self, n: int = 20) -> str:
        return log_tail(self.log_path, n)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
