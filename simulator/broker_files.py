"""The files a harness mosquitto (:class:`simulator.broker.Broker`) runs from: its folders, its
certificates, its mosquitto.conf and its dynamic-security plugin's file of identities.

Standard library and :mod:`cloud_hub.identity` only, so the minimal edge venv can use it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cloud_hub.identity.broker_files import owned_by_broker
from cloud_hub.identity.dynsec import Identity, initial_config
from cloud_hub.identity.mosquitto import secure_conf
from cloud_hub.identity.pki import CertificateAuthority

__all__ = [
    "owned_temp_dir",
    "persistence_dir",
    "write_certificates",
    "write_conf",
    "write_identities",
]

_HOSTS = ("127.0.0.1", "localhost")
_SERVER_CERT, _SERVER_KEY = "server.crt", "server.key"
_OWNER_FILE = "owner.pid"  # the process whose Broker made the folder (and removes it at close)


def persistence_dir() -> Path:
    # Its own folder directly under the system temp dir: a caller's ``workdir`` often sits in
    # a root-only (0700) temp folder that the ``mosquitto`` user cannot even enter, and then
    # every save fails with "Permission denied" and a restart comes back empty.
    folder = owned_temp_dir("edgeloop-mosquitto-db-")
    owned_by_broker(folder)
    return folder


def owned_temp_dir(prefix: str) -> Path:
    """A new temporary folder that names the process that made it; first, the folders of
    ``prefix`` left behind by processes that no longer exist are removed."""
    _remove_orphaned_dirs(Path(tempfile.gettempdir()), prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    (folder / _OWNER_FILE).write_text(str(os.getpid()))
    return folder


def _remove_orphaned_dirs(parent: Path, prefix: str) -> None:
    """Folders whose owner died without closing its broker (a test run killed with SIGKILL):
    its mosquitto died with it (see Broker.start()), so nothing uses them any more. A folder
    without an owner file is left alone: it may be one being made right now."""
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


def write_certificates(workdir: Path, data_dir: Path) -> Path:
    """The CA certificate clients trust, in ``workdir`` (returned); the server's certificate
    and key, in the broker's own ``data_dir``."""
    ca_pem, cert_pem, key_pem = _harness_pki()
    ca_file = workdir / "ca.crt"
    ca_file.write_bytes(ca_pem)
    for name, data in ((_SERVER_CERT, cert_pem), (_SERVER_KEY, key_pem)):
        (data_dir / name).write_bytes(data)
        owned_by_broker(data_dir / name)
    return ca_file


def write_conf(conf_path: Path, base: str, *, port: int, host: str, data_dir: Path,
               dynsec_file: Path, secure: bool, settings: str) -> None:
    """``base`` (the repository's mosquitto.conf) with the listener first and ``settings``
    last, which override it. Secure: TLS with :func:`write_certificates`' files and the
    dynamic-security plugin on ``dynsec_file``; otherwise anonymous plain TCP."""
    if secure:
        head = secure_conf(
            port=port, host=host, certfile=data_dir / _SERVER_CERT,
            keyfile=data_dir / _SERVER_KEY, dynsec_file=dynsec_file,
        )
        tail = ""
    else:
        head = f"listener {port} {host}\n"
        tail = "\n# Broker(secure=False): anonymous clients, asked for by the caller\n" \
               "allow_anonymous true\n"
    if settings:
        tail += "\n# asked for by the caller\n" + settings.strip() + "\n"
    conf_path.write_text(
        head + f"persistence_location {data_dir}/\n" + base + tail
    )


def write_identities(dynsec_path: Path, identities: Sequence[Identity]) -> None:
    """Put ``identities`` into the plugin's file (merging with what the broker saved there,
    e.g. devices a hub enrolled at run time); only while the broker is stopped."""
    if dynsec_path.exists():
        config = json.loads(dynsec_path.read_text())
        extra = initial_config(identities)
        known_roles = {r["rolename"] for r in config.get("roles", [])}
        config.setdefault("clients", []).extend(extra["clients"])
        config.setdefault("roles", []).extend(
            r for r in extra["roles"] if r["rolename"] not in known_roles)
    else:
        config = initial_config(identities)
    tmp = dynsec_path.with_name(dynsec_path.name + ".tmp")
    tmp.write_text(json.dumps(config))
    owned_by_broker(tmp)
    tmp.replace(dynsec_path)
