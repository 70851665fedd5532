"""mosquitto configuration for a secure edgeloop broker: a TLS listener, no anonymous clients,
and the dynamic-security plugin holding every identity, its role and its bound client id."""

from __future__ import annotations

import glob
from pathlib import Path

__all__ = ["BrokerConfigError", "find_dynsec_plugin", "secure_conf"]

_PLUGIN_NAME = "mosquitto_dynamic_security.so"
_PLUGIN_PLACES = ("/usr/lib/*/", "/usr/lib/", "/usr/local/lib/", "/usr/lib/*/mosquitto/",
                  "/usr/local/lib/*/")


class BrokerConfigError(RuntimeError):
    """Something a secure broker needs is missing."""


def find_dynsec_plugin() -> Path:
    """mosquitto's dynamic-security plugin (Debian ships it in the ``mosquitto`` package)."""
    for place in _PLUGIN_PLACES:
        found = sorted(glob.glob(place + _PLUGIN_NAME))
        if found:
            return Path(found[0])
    raise BrokerConfigError(
        f"{_PLUGIN_NAME} not found under {', '.join(_PLUGIN_PLACES)}; it comes with mosquitto "
        "2 (Debian: apt-get install mosquitto)")


def secure_conf(*, port: int, host: str | None, certfile: Path, keyfile: Path,
                dynsec_file: Path, plugin: Path | None = None) -> str:
    """The security part of a mosquitto.conf (to put before the repository's settings): the
    only listener is TLS, and the only way in is an identity of the dynamic-security plugin."""
    plugin = plugin or find_dynsec_plugin()
    bind = f" {host}" if host else ""
    return (
        "# edgeloop: TLS only, no anonymous clients, identities in the dynamic-security plugin\n"
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        f"plugin {plugin}\n"
        f"plugin_opt_config_file {dynsec_file}\n"
        f"listener {port}{bind}\n"
        f"certfile {certfile}\n"
        f"keyfile {keyfile}\n"
        "tls_version tlsv1.2\n"
    )
