"""Device commands: ``devices`` lists, shows, tags, sets the desired model of, enrolls and
revokes devices; it takes parsed arguments and a :class:`HubClient`."""

from __future__ import annotations

import argparse
from typing import Any

from cloud_hub.cli.argtypes import model_ref
from cloud_hub.cli.client import HubClient
from cloud_hub.cli.enroll import enroll
from cloud_hub.cli.render import console, emit, fmt

__all__ = ["DEVICE_COMMANDS", "add_device_parsers"]


def add_device_parsers(sub: Any) -> None:
    d = sub.add_parser("devices", help="devices: list, show, tag, set desired")
    d.add_argument("action", choices=["list", "show", "tag", "desired", "enroll", "revoke"])
    d.add_argument("device_id", nargs="?")
    d.add_argument("--group")
    d.add_argument("--tag", help="filter the list by tag")
    d.add_argument("--tags", help="tag: the device's new comma-separated tags")
    d.add_argument("--model", type=model_ref, help="desired: NAME:VERSION")
    d.add_argument("--out", help="enroll: write agent.toml and ca.crt into this folder "
                                 "(default: ./DEVICE_ID)")
    d.add_argument("--state-dir", help="enroll: the agent's state_dir (default /var/lib/edgeloop)")
    d.add_argument("--mqtt-host", help="enroll: the broker's name as the device reaches it")
    d.add_argument("--mqtt-port", type=int)
    d.add_argument("--from", dest="ids_file", metavar="FILE",
                   help="enroll: many devices, one id per line ('-': stdin), as a job with a "
                        "progress bar; each bundle goes into OUT/DEVICE_ID (--out, default .)")


_DEVICE_COLS = ("device_id", "online", "last_seen", "group", "tags", "desired_model",
                "active_model", "reported_state", "telemetry_readings", "anomalies")


def devices(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "list":
        emit(c.get_all("/devices", group=a.group, tag=a.tag), a.json, _DEVICE_COLS, "devices")
    elif a.action == "show":
        emit(_with_conflict_line(c.get(f"/devices/{a.device_id}"), a.json), a.json,
             title=a.device_id)
    elif a.action == "tag":
        body: dict[str, Any] = {}
        if a.tags is not None:
            body["tags"] = [t for t in a.tags.split(",") if t]
        if a.group is not None:
            body["group"] = a.group or None
        emit(c.patch(f"/devices/{a.device_id}", body), a.json, title=a.device_id)
    elif a.action == "desired":
        name, version = a.model
        emit(c.put(f"/devices/{a.device_id}/desired",
                   {"model": {"name": name, "version": version}}), a.json, title=a.device_id)
    elif a.action == "enroll":
        return enroll(a, c)
    elif a.action == "revoke":
        data = c.post(f"/devices/{a.device_id}/revoke")
        if a.json:
            emit(data, True)
        else:
            seconds = data.get("broker_seconds")
            console().print(f"revoked {a.device_id}: "
                            + (f"the broker disconnected and refuses it ({seconds:.3f} s)"
                               if seconds is not None else "refused by the hub (the broker's "
                               "credentials are managed outside the hub)"), highlight=False)
    return 0


def _with_conflict_line(device: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """A device whose id two sources use says so in one line (JSON keeps the record)."""
    conflict = device.get("conflict")
    if as_json or not conflict:
        return device
    return {**device, "conflict": f"WARNING: {conflict['detail']} (seen {conflict['count']} "
                                  f"times, {fmt(conflict['first_at'])} to "
                                  f"{fmt(conflict['last_at'])})"}


DEVICE_COMMANDS = {"devices": devices}
