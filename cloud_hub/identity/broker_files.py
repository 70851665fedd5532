"""What ``cloud-hub broker init`` writes for an operator's secure mosquitto, and starting it.

One folder (default ``DATA_DIR/broker``):

- ``ca.crt`` / ``ca.key``: the hub's own CA (or the operator's, copied in), 0600 for the key;
- ``server.crt`` / ``server.key``: the broker's TLS certificate for the given host names;
- ``dynamic-security.json``: the plugin's identities: the broker admin and the hub's three
  connections (``<hub>`` and ``<hub>-admin``), each with its own role;
- ``mosquitto.conf``: TLS listener + plugin + the repository's broker settings, no anonymous;
- ``hub.json``: the hub's password, client id, port and CA (``cloud-hub serve`` reads it);
- ``admin.json``: the broker admin's credential (for ``mosquitto_ctrl``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from cloud_hub.identity.dynsec import new_password, write_config
from cloud_hub.identity.mosquitto import BrokerConfigError, secure_conf
from cloud_hub.identity.pki import CertificateAuthority, write_private
from cloud_hub.identity.roles import broker_admin_identity, hub_identities
from shared.topics import Topics

__all__ = ["BrokerFiles", "init_broker", "owned_by_broker", "run_broker"]

# Used when the repository's mosquitto.conf is not beside the package (a wheel install).
_BASE_SETTINGS = """persistence true
autosave_interval 600
persistent_client_expiration 7d
max_queued_messages 2000000
max_queued_bytes 4294967296
max_inflight_messages 100
max_packet_size 8388608
retain_available true
set_tcp_nodelay true
sys_interval 10
log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages false
"""


def _base_settings() -> str:
    repo_conf = Path(__file__).resolve().parents[2] / "mosquitto.conf"
    return repo_conf.read_text() if repo_conf.exists() else _BASE_SETTINGS


@dataclass(frozen=True)
class BrokerFiles:
    folder: Path
    port: int

    @property
    def conf(self) -> Path:
        return self.folder / "mosquitto.conf"

    @property
    def data(self) -> Path:
        return self.folder / "data"


def owned_by_broker(path: Path) -> None:
    """mosquitto started as root drops to the ``mosquitto`` user: it must read its key and
    own the folders and files it writes (its persistence, the plugin's file), or every save
    fails and a restart loses queued and retained messages."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    os.chown(path, entry.pw_uid, entry.pw_gid)


def init_broker(folder: Path, *, hub_id: str, port: int = 8883, hosts: list[str],
                topics: Topics, bind: str | None = None, ca_cert: Path | None = None,
                ca_key: Path | None = None, server_cert: Path | None = None,
                server_key: Path | None = None, force: bool = False) -> BrokerFiles:
    """Write everything a secure broker for this hub needs; refuses to overwrite unless
    ``force`` (a new hub password would lock the running hub out)."""
    if (folder / "hub.json").exists() and not force:
        raise FileExistsError(f"{folder} already holds a broker set-up (use --force to replace "
                              "it: every device must then be enrolled again)")
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    data.mkdir(exist_ok=True)
    if server_cert is not None or server_key is not None:
        if server_cert is None or server_key is None or ca_cert is None:
            raise BrokerConfigError("an operator's server certificate needs --server-cert, "
                                    "--server-key and the --ca-cert that signed it")
        shutil.copyfile(ca_cert, folder / "ca.crt")
        shutil.copyfile(server_cert, data / "server.crt")
        write_private(data / "server.key", server_key.read_bytes())
    else:
        if ca_cert is not None and ca_key is not None:
            ca = CertificateAuthority.load(ca_cert, ca_key)
        elif ca_cert is None and ca_key is None:
            ca = CertificateAuthority.create()
        else:
            raise BrokerConfigError("an operator's CA needs both --ca-cert and --ca-key")
        ca.save(folder / "ca.crt", folder / "ca.key")
        server = ca.issue_server(hosts)
        (data / "server.crt").write_bytes(server.cert_pem)
        write_private(data / "server.key", server.key_pem)
    password = new_password()
    admin = broker_admin_identity()
    write_config(data / "dynamic-security.json",
                 [admin, *hub_identities(topics, hub_id, password)])
    for path in (data, data / "server.crt", data / "server.key",
                 data / "dynamic-security.json"):
        owned_by_broker(path)
    conf = secure_conf(port=port, host=bind, certfile=data / "server.crt",
                       keyfile=data / "server.key", dynsec_file=data / "dynamic-security.json")
    (folder / "mosquitto.conf").write_text(
        conf + f"persistence_location {data}/\n" + _base_settings())
    write_private(folder / "hub.json", json.dumps({
        "client_id": hub_id, "password": password, "port": port, "tls": True,
        "ca_file": "ca.crt", "topic_prefix": topics.prefix}, indent=1).encode())
    write_private(folder / "admin.json", json.dumps(admin.credential.to_dict(),
                                                    indent=1).encode())
    return BrokerFiles(folder, port)


def _port_free(port: int, host: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return str(exc)
    return None


def run_broker(folder: Path, mosquitto: str) -> int:
    """Run mosquitto on what :func:`init_broker` wrote, in the foreground; refuse loudly when
    the port is taken (mosquitto would otherwise run on another address family only)."""
    hub = json.loads((folder / "hub.json").read_text())
    port = int(hub["port"])
    problem = _port_free(port, "0.0.0.0")
    if problem is not None:
        raise BrokerConfigError(f"port {port} is taken ({problem}): stop what listens there, "
                                "or run `cloud-hub broker init --force --port N`")
    proc = subprocess.Popen([mosquitto, "-c", str(folder / "mosquitto.conf")])

    def forward(signum: int, _frame: FrameType | None) -> None:
        proc.send_signal(signum)  # mosquitto saves its state on SIGTERM/SIGINT, then exits

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return proc.wait()
