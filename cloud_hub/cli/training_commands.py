"""Training commands: ``train`` starts a job and follows it, ``jobs`` lists, shows or cancels
them; each takes parsed arguments and a :class:`HubClient`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cloud_hub.cli.argtypes import json_object
from cloud_hub.cli.client import HubClient
from cloud_hub.cli.render import console, emit
from cloud_hub.cli.timearg import WHEN_HELP, parse_when
from cloud_hub.core.states import JobStatus, TrainingStage

__all__ = ["TRAINING_COMMANDS", "add_training_parsers", "follow_job"]


def add_training_parsers(sub: Any) -> None:
    t = sub.add_parser("train", help="start a training job and follow its progress")
    t.add_argument("name", help="model name")
    t.add_argument("--devices", help="comma-separated device ids (default: all)")
    t.add_argument("--channels", help="comma-separated channels (default: all)")
    t.add_argument("--since", type=parse_when, help=f"readings from: {WHEN_HELP}")
    t.add_argument("--until", type=parse_when, help="readings until (same forms)")
    t.add_argument("--family", choices=["dense_ae", "conv1d_ae", "pca"])
    t.add_argument("--window", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--quantization", choices=["int8", "float16", "dynamic", "float32", "auto"])
    t.add_argument("--spec", type=json_object, help="more TrainingSpec fields as JSON")
    t.add_argument("--csv", metavar="FILE", help="train on this CSV instead of stored telemetry")
    t.add_argument("--no-wait", action="store_true", help="return once the job is queued")

    j = sub.add_parser("jobs", help="list training jobs, show one, or cancel one")
    j.add_argument("id", nargs="?", type=int)
    j.add_argument("--cancel", type=int, metavar="ID")


_JOB_COLS = ("id", "name", "status", "progress", "model", "error")


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


TRAINING_COMMANDS = {"train": train, "jobs": jobs}
