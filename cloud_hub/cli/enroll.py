"""``devices enroll``: enroll one device, or many from a file as hub jobs, and write each
device's bundle (agent.toml and ca.crt) into its folder."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cloud_hub.cli.client import HubClient
from cloud_hub.cli.render import console, emit

if TYPE_CHECKING:
    from cloud_hub.identity.enrollment import Bundle

__all__ = ["enroll"]

_MAX_BULK = 1000  # devices per enrollment job (the API's limit)


def enroll(a: argparse.Namespace, c: HubClient) -> int:
    """``devices enroll``: one device, its bundle into --out (default ./DEVICE_ID); with
    --from, every device listed in the file."""
    from cloud_hub.identity.enrollment import Bundle

    body: dict[str, Any] = {}
    for key in ("state_dir", "mqtt_host", "mqtt_port"):
        if getattr(a, key) is not None:
            body[key] = getattr(a, key)
    if a.ids_file:
        return _enroll_many(a, c, body)
    folder = _writable_folder(Path(a.out or a.device_id))
    data = c.post(f"/devices/{a.device_id}/enroll", body)
    path = _write_bundle(Bundle(**data), folder, a.device_id)
    if a.json:
        emit({"device_id": a.device_id, "config": str(path), "fingerprints": data["fingerprints"],
              "broker_credential": data["broker_credential"]}, True)
        return 0
    out = console()
    out.print(f"enrolled {a.device_id}: {path} (+ ca.crt beside it)", highlight=False)
    for key_id, fingerprint in data["fingerprints"].items():
        out.print(f"  pinned signing key {key_id}: {fingerprint}", highlight=False)
    out.print("  check it against `cloud-hub keys fingerprint` on the hub, then on the device: "
              f"edge-agent run --config {path.name}", highlight=False)
    return 0


def _writable_folder(folder: Path) -> Path:
    """``folder`` if a bundle can be written there: checked before the hub enrolls anything,
    since the device's password is in the answer and nowhere else."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SystemExit(f"error: cannot write the bundle into {folder}: {existing} is not a "
                         "folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f"error: cannot write the bundle into {folder}: {existing} is not "
                         "writable")
    return folder


def _write_bundle(bundle: Bundle, folder: Path, device_id: str) -> Path:
    try:
        return bundle.write(folder)
    except OSError as exc:
        raise SystemExit(
            f"error: the hub enrolled {device_id} but its bundle could not be written into "
            f"{folder} ({exc.strerror or exc}): revoke it (cloud-hub devices revoke "
            f"{device_id}) and enroll it again") from None


def _read_ids(source: str) -> list[str]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"error: devices enroll --from {source}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [i for i in ids if i]


def _enroll_many(a: argparse.Namespace, c: HubClient, body: dict[str, Any]) -> int:
    """Enroll the devices listed in a file as hub jobs of up to 1,000 devices each (the
    broker's work grows with the fleet, past any sensible HTTP timeout), with a progress bar;
    each bundle is written into OUT/DEVICE_ID."""
    from cloud_hub.identity.enrollment import Bundle

    ids = [a.device_id] if a.device_id else []
    ids += _read_ids(a.ids_file)
    if not ids:
        raise SystemExit(f"devices enroll --from {a.ids_file}: no device ids in it")
    out, written = _writable_folder(Path(a.out or ".")), list[dict[str, str]]()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} devices"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("enrolling", total=len(ids), info="")
        for start in range(0, len(ids), _MAX_BULK):
            part = ids[start:start + _MAX_BULK]
            job = c.post("/enrollment-jobs", {**body, "device_ids": part})
            collect_key = job["collect_key"]  # opens the bundles; no hub keeps it
            while job["status"] == "running":
                bar.update(task, completed=start + job["devices_done"], info=job["stage"])
                time.sleep(0.5)  # polling an HTTP API: the interval is the point
                job = c.get(f"/enrollment-jobs/{job['id']}")
            if job["status"] != "succeeded":
                bar.update(task, info=f"{job['status']}: {job['error']}")
                raise SystemExit(f"enrollment job {job['id']} {job['status']}: {job['error']} "
                                 f"({len(written)} of {len(ids)} devices enrolled before it)")
            for bundle in c.post(f"/enrollment-jobs/{job['id']}/bundles",
                                 {"collect_key": collect_key}):
                path = _write_bundle(Bundle(**bundle), out / bundle["device_id"],
                                     bundle["device_id"])
                written.append({"device_id": bundle["device_id"], "job": job["id"],
                                "config": str(path)})
            bar.update(task, completed=start + len(part), info="done")
    if a.json:
        emit(written, True)
    else:
        console().print(f"enrolled {len(written)} devices: {out}/DEVICE_ID/agent.toml "
                        "(+ ca.crt beside each)", highlight=False)
    return 0
