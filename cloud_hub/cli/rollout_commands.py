"""Rollout commands: ``rollout`` creates a staged rollout (and can follow it), shows, pauses,
resumes, aborts or rolls one back; it takes parsed arguments and a :class:`HubClient`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cloud_hub.cli.argtypes import json_object, model_ref
from cloud_hub.cli.client import HubClient
from cloud_hub.cli.render import emit
from cloud_hub.core.states import RolloutStatus

__all__ = ["ROLLOUT_COMMANDS", "add_rollout_parsers", "follow_rollout"]


def add_rollout_parsers(sub: Any) -> None:
    r = sub.add_parser("rollout", help="staged rollouts")
    r.add_argument("action", choices=["create", "status", "pause", "resume", "abort",
                                      "rollback"])
    r.add_argument("id", nargs="?", type=int)
    r.add_argument("--model", type=model_ref, help="NAME:VERSION to roll out")
    r.add_argument("--devices")
    r.add_argument("--group")
    r.add_argument("--tags")
    r.add_argument("--percent", type=int, default=100)
    r.add_argument("--policy", type=json_object,
                   help='JSON, e.g. {"canary_size": 2, "wave_size": 20}')
    r.add_argument("--wait", action="store_true",
                   help="create: follow it to the end with a progress bar (exit 1 unless it "
                        "succeeds)")


_ROLLOUT_COLS = ("id", "model", "status", "stage", "devices_total", "devices_updated",
                 "seconds_to_full", "reason")


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


ROLLOUT_COMMANDS = {"rollout": rollout}
