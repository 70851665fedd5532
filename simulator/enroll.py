"""Devices of a simulated fleet enrolled through the hub's REST API, as an operator would.

``hub_enrollment(client, folder)`` is a ``mqtt_auth`` for :class:`simulator.fleet.Fleet` and
:class:`simulator.scale_fleet.ScaleFleet`: each device is enrolled when it is added, and its agent
logs in with the credential and CA from its bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_hub.cli.client import HubClient

__all__ = ["bundle_login", "hub_enrollment"]


def bundle_login(bundle: dict[str, Any], ca_file: Path) -> dict[str, Any]:
    """The ``[mqtt]`` login keys of an enrollment bundle (TLS, CA, username, password)."""
    login = {k: v for k, v in bundle["mqtt"].items() if k not in ("host", "port",
                                                                   "topic_prefix")}
    if bundle.get("ca_pem"):
        if not ca_file.exists():
            ca_file.parent.mkdir(parents=True, exist_ok=True)
            ca_file.write_text(bundle["ca_pem"])
        login["tls_ca_file"] = str(ca_file)
    return login


def hub_enrollment(client: HubClient, folder: Path) -> Callable[[str], dict[str, Any]]:
    """Enroll each device through the hub when the fleet adds it; its login keys."""

    def login(device_id: str) -> dict[str, Any]:
        bundle = client.post(f"/devices/{device_id}/enroll",
                             {"state_dir": str(folder / device_id)})
        return bundle_login(bundle, folder / "ca.crt")

    return login


def enroll_many(client: HubClient, device_ids: list[str], folder: Path,
                chunk: int = 1000) -> dict[str, dict[str, Any]]:
    """Enroll many devices in a few calls; each device's login keys."""
    logins: dict[str, dict[str, Any]] = {}
    for start in range(0, len(device_ids), chunk):
        bundles = client.post("/enrollments", {"device_ids": device_ids[start:start + chunk]})
        for b in bundles:
            logins[b["device_id"]] = bundle_login(b, folder / "ca.crt")
    return logins


__all__ += ["enroll_many"]
