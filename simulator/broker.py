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
file (1,000 devices in well under a second); later ones through ``$CONTROL``.

Standard library, ``cryptography`` and paho only, so the minimal edge venv can use it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
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
    initial_config,
    new_password,
    remove_commands,
)
from cloud_hub.identity.mosquitto import secure_conf
from cloud_hub.identity.pki import CertificateAuthority
from cloud_hub.identity.roles import (
    broker_admin_identity,
    device_identity,
    device_rolename,
    hub_identities,
)
from shared.tls import client_context
from shared.topics import TopicAccess, Topics
from simulator.process import log_tail, start_child, terminate

__all__ = [
    "Broker",
    "BrokerError",
    "Credential",
    "find_mosquitto",
    "free_port",
    "repo_mosquitto_conf",
]

log = logging.getLogger(__name__)

_HOSTS = ("127.0.0.1", "localhost")


class BrokerError(RuntimeError):
    """mosquitto could not be found or did not start."""


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


# The harness's servers (brokers, hubs) take ports from below the kernel's ephemeral range. A
# port that bind(0) handed out is free for the kernel to hand out again, to any process's bind(0)
# or outgoing connection, as soon as nothing listens on it: a broker stopped to test a restart
# could then find its own port taken ("Address already in use"), the more likely the busier the
# machine. A port outside that range is only ever taken by an explicit bind.
_HARNESS_PORTS = (20000, 32768)
_PORT_RNG = random.SystemRandom()  # not the global `random`: tests may seed that


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A loopback TCP port nothing listens on (below the ephemeral range where it can)."""
    low, high = _HARNESS_PORTS[0], min(_HARNESS_PORTS[1], _ephemeral_low())
    for _ in range(100 if high - low >= 1000 else 0):
        port = _PORT_RNG.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


def repo_mosquitto_conf() -> Path:
    here = Path(__file__).resolve().parent.parent / "mosquitto.conf"
    if not here.exists():
        raise BrokerError(f"mosquitto.conf not found next to the packages ({here})")
    return here


def _let_broker_write(path: Path) -> None:
    """Started as root, mosquitto drops to the ``mosquitto`` user: it must own its folder and
    files, or every persistence save fails (and a restart loses queued and retained messages)."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    os.chown(path, entry.pw_uid, entry.pw_gid)


_OWNER_FILE = "owner.pid"  # the process whose Broker made the folder (and removes it at close)


def _persistence_dir() -> Path:
    # Its own folder directly under the system temp dir: a caller's ``workdir`` often sits in
    # a root-only (0700) temp folder that the ``mosquitto`` user cannot even enter, and then
    # every save fails with "Permission denied" and a restart comes back empty.
    folder = _owned_temp_dir("edgeloop-mosquitto-db-")
    _let_broker_write(folder)
    return folder


def _owned_temp_dir(prefix: str) -> Path:
    """A new temporary folder that names the process that made it; first, the folders of
    ``prefix`` left behind by processes that no longer exist are removed."""
    _remove_orphaned_dirs(Path(tempfile.gettempdir()), prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    (folder / _OWNER_FILE).write_text(str(os.getpid()))
    return folder


def _remove_orphaned_dirs(parent: Path, prefix: str) -> None:
    """Folders whose owner died without closing its broker (a test run killed with SIGKILL):
    its mosquitto died with it (see start()), so nothing uses them any more. A folder without
    an owner file is left alone: it may be one being made right now."""
    for folder in parent.glob(f"{prefix}*"):
        try:
            owner = int((folder / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _process_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.lru_cache(maxsize=1)
def _harness_pki() -> tuple[bytes, bytes, bytes]:
    """One CA and loopback server certificate per process: every test broker can share them,
    and making them costs more than the rest of a broker's start."""
    ca = CertificateAuthority.create("edgeloop test CA")
    server = ca.issue_server(list(_HOSTS))
    return ca.cert_pem, server.cert_pem, server.key_pem


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
        self.workdir = workdir or _owned_temp_dir("edgeloop-mosquitto-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = _persistence_dir()
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
            ca_pem, cert_pem, key_pem = _harness_pki()
            self.ca_file = self.workdir / "ca.crt"
            self.ca_file.write_bytes(ca_pem)
            for name, data in (("server.crt", cert_pem), ("server.key", key_pem)):
                (self.data_dir / name).write_bytes(data)
                _let_broker_write(self.data_dir / name)
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
        base = repo_mosquitto_conf().read_text()
        if self.secure:
            head = secure_conf(
                port=self.port, host=self.host, certfile=self.data_dir / "server.crt",
                keyfile=self.data_dir / "server.key", dynsec_file=self.dynsec_path,
            )
            tail = ""
        else:
            head = f"listener {self.port} {self.host}\n"
            tail = "\n# Broker(secure=False): anonymous clients, asked for by the caller\n" \
                   "allow_anonymous true\n"
        if self.settings:
            tail += "\n# asked for by the caller\n" + self.settings.strip() + "\n"
        self.conf_path.write_text(
            head + f"persistence_location {self.data_dir}/\n" + base + tail
        )

    def _write_identities(self) -> None:
        """Put identities added while stopped into the plugin's file (merging with what the
        broker saved there, e.g. devices a hub enrolled at run time)."""
        if not self._pending:
            return
        if self.dynsec_path.exists():
            config = json.loads(self.dynsec_path.read_text())
            extra = initial_config(self._pending)
            known_roles = {r["rolename"] for r in config.get("roles", [])}
            config.setdefault("clients", []).extend(extra["clients"])
            config.setdefault("roles", []).extend(
                r for r in extra["roles"] if r["rolename"] not in known_roles)
        else:
            config = initial_config(self._pending)
        tmp = self.dynsec_path.with_name(self.dynsec_path.name + ".tmp")
        tmp.write_text(json.dumps(config))
        _let_broker_write(tmp)
        tmp.replace(self.dynsec_path)
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
