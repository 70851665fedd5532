"""The steps of an end-to-end run, each driving the hub through its REST API.

Shared by ``simulator demo`` and ``simulator run``: wait for training data, train (showing
progress), publish, roll out and wait until every device runs the model, schedule faults,
watch detection, then drain and collect what the hub stored and score it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cloud_hub.cli.client import ApiError, HubClient
from cloud_hub.core.states import ROLLOUT_ACTIVE
from simulator.faults import DEFAULT_DURATION_S, FaultKind
from simulator.fleet import Fleet
from simulator.report import DeviceAccount, account_devices
from simulator.scoring import DetectionScore, Event, GroundTruth, score_detections

__all__ = [
    "LOOP_SPEC",
    "LoopError",
    "ModelRef",
    "Results",
    "collect_results",
    "publish_model",
    "roll_out",
    "schedule_faults",
    "settled_rollout",
    "train_model",
    "wait_for_telemetry",
    "watch_faults",
]

log = logging.getLogger(__name__)
Say = Callable[[str], None]
ModelRef = tuple[str, int]

# The model the demo and the scenarios train, chosen on simulated pumps with the hub's own
# pipeline (simulator/README.md, "The demo's model"): latent 16 follows load, cycle phase and
# frequency (8 was too narrow and missed stuck sensors); channel_max keeps a fault on one channel
# of eight from being averaged away (the mean score missed a stuck sensor in about one demo of
# three).
LOOP_SPEC: dict[str, Any] = {
    "family": "dense_ae", "window": 32, "hidden": 128, "latent": 16, "epochs": 30,
    "threshold_quantile": 0.999, "threshold_factor": 2.0, "score_reduce": "channel_max",
    "quantization": "int8",
}


class LoopError(RuntimeError):
    """A step of the loop failed or timed out; the message says which and why."""


def _stored_by_device(client: HubClient) -> dict[str, int]:
    return {str(r["device_id"]): int(r["readings"]) for r in client.get_all("/telemetry/summary")}


def wait_for_telemetry(client: HubClient, fleet: Fleet, *, min_seconds: float,
                       timeout: float) -> dict[str, int]:
    """Wait until the hub stored at least ``min_seconds`` of readings of every device."""
    need = {d.device_id: int(min_seconds * d.spec.rate_hz) for d in fleet.devices.values()}
    deadline = time.monotonic() + timeout
    stored: dict[str, int] = {}
    while time.monotonic() < deadline:
        stored = _stored_by_device(client)
        if all(stored.get(k, 0) >= v for k, v in need.items()):
            return stored
        time.sleep(0.5)
    short = {k: f"{stored.get(k, 0)}/{v}" for k, v in need.items() if stored.get(k, 0) < v}
    raise LoopError(f"training data: after {timeout:g}s the hub still lacks readings of {short}")


def train_model(client: HubClient, console: Console, *, name: str, devices: Sequence[str],
                until: float, spec: dict[str, Any], timeout: float = 600.0) -> ModelRef:
    """POST /training-jobs and follow it with a progress bar until it succeeds."""
    job = client.post("/training-jobs", {"name": name, "devices": list(devices),
                                         "until": until, "spec": spec})
    deadline = time.monotonic() + timeout
    columns = (TextColumn("[bold]training[/] {task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=1.0)
        while job["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                client.post(f"/training-jobs/{job['id']}/cancel")
                raise LoopError(f"training job {job['id']} did not finish within {timeout:g}s")
            time.sleep(0.5)
            job = client.get(f"/training-jobs/{job['id']}")
            p = job.get("progress") or {}
            text = str(p.get("stage") or job["status"])
            if p.get("epochs"):
                text += f" epoch {p.get('epoch')}/{p.get('epochs')}"
            if p.get("loss") is not None:
                text += f" loss {p['loss']:.4f}"
            bar.update(task, completed=float(p.get("fraction") or 0.0), description=text)
        if job["status"] == "succeeded":
            bar.update(task, completed=1.0, description="done")
    if job["status"] != "succeeded" or not job.get("model"):
        raise LoopError(f"training job {job['id']} {job['status']}: {job.get('error')}")
    return str(job["model"]["name"]), int(job["model"]["version"])


def settled_rollout(client: HubClient, rollout_id: int, timeout: float = 60.0
                    ) -> dict[str, Any]:
    """The rollout as the hub has it once it ended (no longer one of
    :data:`~cloud_hub.core.states.ROLLOUT_ACTIVE`), or as it is after ``timeout``."""
    deadline = time.monotonic() + timeout
    final: dict[str, Any] = client.get(f"/rollouts/{rollout_id}")
    while final.get("status") in ROLLOUT_ACTIVE and time.monotonic() < deadline:
        time.sleep(0.25)
        final = client.get(f"/rollouts/{rollout_id}")
    return final


def publish_model(client: HubClient, ref: ModelRef, say: Say) -> dict[str, Any]:
    """Publish (the hub refuses a model that failed its parity gate); returns report fields."""
    name, version = ref
    try:
        detail = client.post(f"/models/{name}/{version}/publish")
    except ApiError as exc:
        raise LoopError(f"publishing {name} v{version} was refused: {exc}") from None
    parity = detail.get("decision_agreement")
    if parity is None:
        parity = (detail.get("parity") or {}).get("decision_agreement")
    model = {
        "name": name,
        "version": version,
        "quantization": detail.get("quantization"),
        "size_bytes": detail.get("size_bytes"),
        "float_size_bytes": detail.get("float_size_bytes"),
        "parity": parity,
        "family": detail.get("family"),
        "threshold": detail.get("threshold"),
        "threshold_method": detail.get("threshold_method"),
        "training_rows": (detail.get("training") or {}).get("rows"),
        "sha256": detail.get("sha256"),
    }
    say(f"[bold]model[/] {name} v{version} published: {model['quantization']}, "
        f"{model['size_bytes']} B (float {model['float_size_bytes']} B), parity {parity}")
    return model


def _devices_running(client: HubClient, ref: ModelRef, device_ids: Sequence[str]) -> set[str]:
    name, version = ref
    running = set()
    for d in client.get_all("/devices", limit=1000):
        active = d.get("active_model") or {}
        if (d["device_id"] in device_ids and d.get("reported_state") == "active"
                and active.get("name") == name and active.get("version") == version):
            running.add(d["device_id"])
    return running


def roll_out(client: HubClient, fleet: Fleet, ref: ModelRef, say: Say,
             timeout: float = 180.0) -> dict[str, Any]:
    """Roll the model out to every device and wait until each one reports it active."""
    name, version = ref
    device_ids = list(fleet.devices)
    started = time.monotonic()
    method = "rollout"
    rollout: dict[str, Any] = {}
    try:
        rollout = client.post("/rollouts", {
            "model": {"name": name, "version": version},
            "target": {"devices": device_ids},
            "policy": {"canary_size": 1, "wave_size": len(device_ids), "min_observation_s": 2.0},
        })
    except ApiError as exc:
        if exc.status not in (404, 405):
            raise LoopError(f"rollout of {name} v{version} was refused: {exc}") from None
        method = "put_desired"  # this hub has no rollout controller: set desired directly
        for device_id in device_ids:
            client.put(f"/devices/{device_id}/desired",
                       {"model": {"name": name, "version": version}})
    running: set[str] = set()
    while time.monotonic() - started < timeout:
        running = _devices_running(client, ref, device_ids)
        if len(running) == len(device_ids):
            break
        time.sleep(0.25)
    seconds = time.monotonic() - started
    result: dict[str, Any] = {
        "devices_updated": len(running),
        "devices_total": len(device_ids),
        "seconds_to_full": round(seconds, 3) if len(running) == len(device_ids) else None,
        "method": method,
    }
    if rollout.get("id") is not None:
        # The devices run it; the hub promotes the rollout once its last wave was observed
        # (min_observation_s): the report gives the hub's verdict, not a "running" caught in
        # between.
        final = (settled_rollout(client, rollout["id"]) if len(running) == len(device_ids)
                 else client.get(f"/rollouts/{rollout['id']}"))
        result.update(rollout_id=final.get("id"), rollout_status=final.get("status"),
                      hub_seconds_to_full=final.get("seconds_to_full"))
    if len(running) < len(device_ids):
        missing = sorted(set(device_ids) - running)
        statuses = fleet.statuses()
        detail = {d: (statuses[d].get("model_state"), statuses[d].get("last_error"))
                  for d in missing[:5]}
        raise LoopError(f"rollout: {len(missing)} device(s) not active after {timeout:g}s: "
                        f"{detail}")
    say(f"[bold]rollout[/] {name} v{version} active on {len(running)}/{len(device_ids)} "
        f"devices in {seconds:.1f} s ({method})")
    return result


def schedule_faults(fleet: Fleet, kinds: Sequence[str], *, start: float, duration_s: float,
                    slot_s: float, seed: int = 0) -> list[GroundTruth]:
    """One fault per device per slot, kinds rotating over devices; starts jittered per seed."""
    rng = np.random.default_rng(seed)
    slots = max(1, int(duration_s // slot_s))
    truths = []
    for i, device in enumerate(fleet.devices.values()):
        for s in range(slots):
            kind = FaultKind(kinds[(i + s) % len(kinds)])
            length = DEFAULT_DURATION_S[kind]
            latest = max(slot_s - length - 8.0, 1.0)  # leave room for the detector's window
            at = start + s * slot_s + float(rng.uniform(1.0, latest))
            truths.append(device.source.inject(kind, at=at, duration=length))
    return truths


def watch_faults(client: HubClient, console: Console, *, end: float) -> None:
    """Show progress until ``end`` (epoch), with the anomaly events the hub stored so far."""
    total = max(end - time.time(), 0.0)
    columns = (TextColumn("[bold]detecting[/] {task.description}"), BarColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=total)
        while (left := end - time.time()) > 0:
            time.sleep(min(1.0, left))
            stored = client.get("/metrics").get("anomalies")
            bar.update(task, completed=total - max(end - time.time(), 0.0),
                       description=f"{stored} anomaly events stored")


@dataclass
class Results:
    """What the hub stored, scored against the ground truth."""

    client: HubClient
    ref: ModelRef
    accounts: list[DeviceAccount]
    events: list[Event]
    faults: list[GroundTruth]
    score: DetectionScore
    metrics: dict[str, Any]
    dead_letters: int
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)

    def plots(self, out_dir: Path, origin: float, truths: Sequence[GroundTruth],
              max_devices: int = 3,
              model_of: dict[str, ModelRef] | None = None) -> list[Path]:
        """Signal/score/threshold/fault plots for a few devices, and the latency histogram.

        Scores are replayed with ``model_of[device]`` (default: the run's model)."""
        from simulator.plots import DeviceTrace, plot_device, plot_latencies
        from simulator.replay import replay_scores

        models: dict[ModelRef, tuple[dict[str, Any], bytes]] = {}

        def model(ref: ModelRef) -> tuple[dict[str, Any], bytes]:
            if ref not in models:
                name, version = ref
                models[ref] = (self.client.get(f"/models/{name}/{version}"),
                               self.client.get(f"/models/{name}/{version}/tflite"))
            return models[ref]

        chosen: list[str] = []
        seen_kinds: set[str] = set()
        for f in truths:  # devices whose faults show the most different kinds
            if f.device_id not in chosen and f.kind not in seen_kinds:
                chosen.append(f.device_id)
                seen_kinds.add(f.kind)
            if len(chosen) == max_devices:
                break
        paths = []
        for device_id in chosen:
            data = self.client.get_telemetry(device_id, since=origin - 10.0,
                                              limit=100_000)
            ts = np.asarray(data["ts"], dtype=np.float64)
            values = np.asarray(data["values"], dtype=np.float64)
            detail, tflite = model((model_of or {}).get(device_id, self.ref))
            trace = replay_scores(tflite, detail["manifest"], data["channels"], ts, values)
            paths.append(plot_device(
                DeviceTrace(device_id, data["channels"], ts, values, trace,
                            [f for f in truths if f.device_id == device_id],
                            [e for e in self.events if e.device_id == device_id]),
                out_dir / f"device-{device_id}.png", origin,
            ))
        paths.append(plot_latencies(self.score.latencies_ms, out_dir / "latency.png"))
        return paths


def collect_results(client: HubClient, fleet: Fleet, ref: ModelRef, say: Say,
                    drain_timeout: float = 60.0) -> Results:
    """After the agents stopped: wait for ingest to catch up, then fetch and score."""
    generated = fleet.samples_generated()
    deadline = time.monotonic() + drain_timeout
    stored = _stored_by_device(client)
    while time.monotonic() < deadline:
        if all(stored.get(d, 0) >= n for d, n in generated.items()):
            break
        time.sleep(0.25)
        stored = _stored_by_device(client)
    summary = client.get_all("/telemetry/summary")
    rows = client.get_all("/anomalies", limit=10_000)
    events = [Event.from_api(r) for r in rows if r["device_id"] in generated]
    truths = fleet.ground_truth()
    score = score_detections(truths, events)
    statuses = fleet.statuses()
    accounts = account_devices(generated, summary, events, statuses)
    metrics = client.get("/metrics")
    dead = client.get_all("/dead-letters", limit=1000)
    lost = sum(a.readings_lost for a in accounts)
    say(f"[bold]hub[/] stored {sum(a.readings_stored for a in accounts)} of "
        f"{sum(generated.values())} readings ({lost} lost), {len(events)} anomaly events, "
        f"{len(dead)} dead letters")
    return Results(client=client, ref=ref, accounts=accounts, events=events, faults=truths,
                   score=score, metrics=metrics, dead_letters=len(dead), statuses=statuses)
