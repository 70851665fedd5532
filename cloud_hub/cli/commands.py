"""The admin commands: each takes parsed arguments and a :class:`HubClient`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cloud_hub.cli.client import HubClient
from cloud_hub.cli.drift_commands import DRIFT_COMMANDS
from cloud_hub.cli.model_view import model_line, model_lines
from cloud_hub.cli.ops_commands import OPS_COMMANDS
from cloud_hub.cli.render import console, emit, fmt
from cloud_hub.core.states import JobStatus, ModelStatus, RolloutStatus, TrainingStage

if TYPE_CHECKING:
    from cloud_hub.identity.enrollment import Bundle

__all__ = ["COMMANDS"]

_DEVICE_COLS = ("device_id", "online", "last_seen", "group", "tags", "desired_model",
                "active_model", "reported_state", "telemetry_readings", "anomalies")
_MODEL_COLS = ("name", "version", "status", "family", "quantization", "channels", "size_bytes",
               "float_size_bytes", "decision_agreement", "parity_passed", "devices_running")
_JOB_COLS = ("id", "name", "status", "progress", "model", "error")
_MAX_BULK = 1000  # devices per enrollment job (the API's limit)
_ROLLOUT_COLS = ("id", "model", "status", "stage", "devices_total", "devices_updated",
                 "seconds_to_full", "reason")


def _job_row(job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "progress": _progress_text(job.get("progress") or {})}


def _progress_text(p: dict[str, Any]) -> str:
    stage, epoch, epochs = p.get("stage", ""), p.get("epoch") or 0, p.get("epochs") or 0
    if stage == TrainingStage.FITTING and epochs:
        shown = f"fitting {epoch}/{epochs}"
    elif stage == TrainingStage.DONE and epoch:
        shown = f"done after {epoch} of {epochs} epochs" if epoch < epochs else \
            f"done after {epoch} epochs"
    else:
        shown = stage
    if p.get("loss") is not None:
        shown += f" loss={p['loss']:.4g}"
    return shown


def follow_job(client: HubClient, job: dict[str, Any], poll_s: float = 0.5) -> dict[str, Any]:
    """Show a progress bar until the job finishes; returns the final job."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(f"job {job['id']}", total=1.0, info="")
        while not JobStatus(job["status"]).finished:
            time.sleep(poll_s)  # polling an HTTP API: the interval is the point
            job = client.get(f"/training-jobs/{job['id']}")
            bar.update(task, completed=job["progress"].get("fraction", 0.0),
                       info=_job_row(job)["progress"])
        final = _job_row(job)["progress"]
        bar.update(task, completed=job["progress"].get("fraction", 0.0),
                   info=final if job["status"] == JobStatus.SUCCEEDED
                   else f"{job['status']}: {final}")
    return job


def _job_summary(job: dict[str, Any]) -> str:
    model = job.get("model")
    ref = f" model {model['name']}:{model['version']}" if model else ""
    line = f"job {job['id']} {job['status']}:{ref} ({_job_row(job)['progress']})"
    if job.get("error"):
        line += f"\n  reason: {job['error']}"
    return line


def train(a: argparse.Namespace, c: HubClient) -> int:
    body: dict[str, Any] = {"name": a.name, "spec": dict(a.spec or {})}
    for key in ("devices", "channels"):
        if getattr(a, key):
            body[key] = getattr(a, key).split(",")
    for key in ("since", "until"):
        if getattr(a, key) is not None:
            body[key] = getattr(a, key)
    for key in ("family", "window", "epochs", "quantization"):
        if getattr(a, key) is not None:
            body["spec"][key] = getattr(a, key)
    if a.csv:
        params = {"name": a.name, "spec": json.dumps(body["spec"])}
        if a.channels:
            params["channels"] = a.channels
        job = c.request("POST", "/training-jobs/csv", params=params,
                        content=_read_bytes(a.csv, "--csv"), headers={"Content-Type": "text/csv"})
    else:
        job = c.post("/training-jobs", body)
    if not a.no_wait:
        job = follow_job(c, job)
    if a.json:
        emit(job, True)
    else:
        console().print(_job_summary(job), highlight=False, markup=False)
    return 1 if job["status"] in (JobStatus.FAILED, JobStatus.CANCELLED) else 0


def _read_bytes(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: {option} {path}: {exc.strerror or exc}") from None


def jobs(a: argparse.Namespace, c: HubClient) -> int:
    # `is not None`: id 0 is no job, and asking for it must say so, not list every job.
    if a.cancel is not None:
        emit(c.post(f"/training-jobs/{a.cancel}/cancel"), a.json)
        return 0
    data = c.get(f"/training-jobs/{a.id}") if a.id is not None else c.get_all("/training-jobs")
    if not a.json:  # the progress in words (the JSON keeps the hub's object)
        data = [_job_row(j) for j in data] if isinstance(data, list) else _job_row(data)
    emit(data, a.json, _JOB_COLS, "training jobs")
    return 0


def models(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "list":
        emit(c.get_all("/models", name=a.name, status=a.status), a.json, _MODEL_COLS, "models")
    elif a.action == "show":
        name, version = a.refs[0]
        detail = c.get(f"/models/{name}/{version}")
        if a.json:
            emit(detail, True)
        else:
            _print_lines(model_lines(detail))
    elif a.action == "compare":
        if len(a.refs) != 2:
            raise SystemExit("models compare needs two NAME:VERSION arguments")
        (n1, v1), (n2, v2) = a.refs
        data = c.get("/models/compare", a=f"{n1}:{v1}", b=f"{n2}:{v2}")
        if a.json:
            emit(data, True)
        else:
            rows = [{"figure": k, "a": data["a"][k], "b": data["b"][k],
                     "differs": "*" if k in data["differs"] else ""}
                    for k in data["a"] if k not in ("spec", "validation", "parity", "modes")]
            rows += [{"figure": f"parity.{k}", "a": v, "b": data["b"]["parity"].get(k)}
                     for k, v in data["a"]["parity"].items()]
            emit(rows, False, ("figure", "a", "b", "differs"), "compare")
            for mode_ref in ("a", "b"):
                if data[mode_ref].get("modes"):
                    emit(data[mode_ref]["modes"], False, title=f"{mode_ref}: quantization modes")
    elif a.action in ("publish", "retire"):
        done = ModelStatus.PUBLISHED if a.action == "publish" else ModelStatus.RETIRED
        for name, version in a.refs:
            record = c.post(f"/models/{name}/{version}/{a.action}")
            if a.json:
                emit(record, True)
            else:
                _print_lines([model_line(record, done)])
    elif a.action == "rollback":
        name, version = a.refs[0]
        body: dict[str, Any] = {"devices": a.devices.split(",")} if a.devices else {}
        done = c.post(f"/models/{name}/{version}/rollback", body)
        if a.json:
            emit(done, True)
        else:
            console().print(f"rolled back to {name}:{version} (release {done['release']}): "
                            f"{len(done['devices'])} device(s) "
                            f"{', '.join(done['devices']) or '-'}",
                            highlight=False, markup=False, soft_wrap=True)
    elif a.action == "download":
        name, version = a.refs[0]
        out = Path(a.output or f"{name}-v{version}.tflite")
        data = c.get(f"/models/{name}/{version}/tflite")
        try:
            out.write_bytes(data)
        except OSError as exc:
            raise SystemExit(f"error: cannot write {out}: {exc.strerror or exc}") from None
        console().print(f"wrote {out}", highlight=False)
    return 0


def _rollout_row(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "model": f"{r['model']['name']}:{r['model']['version']}"}


def rollout(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "create":
        name, version = a.model
        target: dict[str, Any] = {"percent": a.percent}
        if a.devices:
            target["devices"] = a.devices.split(",")
        if a.group:
            target["group"] = a.group
        if a.tags:
            target["tags"] = a.tags.split(",")
        policy = a.policy or {}
        data = c.post("/rollouts", {"model": {"name": name, "version": version},
                                    "target": target, "policy": policy})
        if a.wait:
            data = follow_rollout(c, data)
            emit(data if a.json else _rollout_row({k: v for k, v in data.items()
                                                   if k != "devices"}), a.json)
            return 0 if data["status"] == RolloutStatus.SUCCEEDED else 1
    elif a.action == "status" and a.id is None:
        data = c.get_all("/rollouts")
        emit(data if a.json else [_rollout_row(r) for r in data], a.json, _ROLLOUT_COLS)
        return 0
    elif a.action == "status":
        data = c.get(f"/rollouts/{a.id}")
        if not a.json:
            emit(_rollout_row({k: v for k, v in data.items() if k != "devices"}), False)
            emit(data["devices"], False, title="devices")
            return 0
    else:
        data = c.post(f"/rollouts/{a.id}/{a.action}")
    emit(data if a.json else _rollout_row({k: v for k, v in data.items() if k != "devices"}),
         a.json)
    return 0


_ROLLOUT_DONE = (RolloutStatus.SUCCEEDED, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK)


def follow_rollout(client: HubClient, rollout: dict[str, Any],
                   poll_s: float = 1.0) -> dict[str, Any]:
    """A progress bar of devices updated until the rollout succeeds, is aborted or rolled back
    (a paused rollout waits for ``rollout resume``, and the bar says so)."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} devices"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(f"rollout {rollout['id']}", total=rollout["devices_total"] or 1,
                            info="")
        while True:
            info = f"{rollout['status']} stage {rollout['stage']}/{rollout['stages']}"
            if rollout["devices_failed"]:
                info += f", {rollout['devices_failed']} failed"
            if rollout["status"] == RolloutStatus.PAUSED:
                info += " (waiting for: cloud-hub rollout resume)"
            bar.update(task, completed=rollout["devices_updated"],
                       total=rollout["devices_total"] or 1, info=info)
            if rollout["status"] in _ROLLOUT_DONE:
                return rollout
            time.sleep(poll_s)  # polling an HTTP API: the interval is the point
            rollout = client.get(f"/rollouts/{rollout['id']}")


def _print_lines(lines: list[str]) -> None:
    console().print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


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
        return _enroll(a, c)
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


def _enroll(a: argparse.Namespace, c: HubClient) -> int:
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


def _with_conflict_line(device: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """A device whose id two sources use says so in one line (JSON keeps the record)."""
    conflict = device.get("conflict")
    if as_json or not conflict:
        return device
    return {**device, "conflict": f"WARNING: {conflict['detail']} (seen {conflict['count']} "
                                  f"times, {fmt(conflict['first_at'])} to "
                                  f"{fmt(conflict['last_at'])})"}


def keys(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "rotate":
        data = c.post("/keys/rotate", {"overlap_s": a.overlap})
    elif a.action == "retire":
        data = c.post(f"/keys/{a.key_id}/retire", {"force": a.force})
    else:
        data = c.get("/keys")
    if a.json:
        emit(data, True)
        return 0
    emit(data["keys"], False, ("key_id", "status", "created_at", "retire_after", "retired_at",
                               "private_key_here"), f"signing keys (active {data['active']})")
    emit(data["trust_lists"], False, ("version", "reason", "keys", "signed_by", "published_at"),
         f"trust lists (latest v{data['trust_version']})")
    if data.get("resigned"):
        emit([{"model": r} for r in data["resigned"]], False, ("model",), "signed again")
    return 0


def api_keys(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "list":
        emit(c.get_all("/api-keys"), a.json, ("id", "name", "prefix", "scope", "revoked_at"))
    elif a.action == "create":
        emit(c.post("/api-keys", {"name": a.name, "scope": a.scope}), a.json)
    elif a.action == "revoke":
        emit(c.delete(f"/api-keys/{a.id}"), a.json)
    return 0


COMMANDS = {"train": train, "jobs": jobs, "models": models, "rollout": rollout,
            "devices": devices, "keys": keys, "api-keys": api_keys, **OPS_COMMANDS,
            **DRIFT_COMMANDS}
