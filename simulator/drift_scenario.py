"""The drift scenario: part of a fleet has its sensors recalibrated, the rest gets real faults.

``simulator run simulator/scenarios/drift.toml`` starts the secure broker, the hub and the
agents, trains a model on their history and rolls it out, sets the hub's retrain policy, and
then, while every device streams:

- the ``drifted`` devices' sensors are recalibrated at ``drift_at`` (channels read a few normal
  spreads off from then on: a concept drift, with no ground truth: the model should learn it).
  Their drift monitors detect it, the hub's retrain policy triggers once the drift is held, a
  training job on their recent readings judged normal makes a new version, which passes the
  parity gate, is released and canaried, and is promoted (or rolled back);
- the other devices, and the drifted ones after recovery, get real faults throughout.

It writes ``reports/<name>/report.json`` (false-alarm rates before, during and after the drift
of the drifted devices, drift detection delays, devices that showed drift without one, the
retraining runs with their steps, seconds to recover, faults detected of those injected, in
total and while a retraining ran) and ``timeline.png``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.faults import DEFAULT_DURATION_S, FaultKind
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from simulator.loop import publish_model, roll_out, train_model, wait_for_telemetry
from simulator.scoring import Event, GroundTruth, score_detections

__all__ = ["DriftScenario", "load_drift_scenario", "run_drift_scenario"]

Say = Callable[[str], None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftFault(_Strict):
    at: float = Field(ge=0, description="seconds after the phase begins")
    device: str
    kind: FaultKind
    duration: float | None = Field(default=None, gt=0)
    severity: float = Field(default=1.0, gt=0)


class DriftScenario(_Strict):
    kind: str = "drift"
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    description: str = ""
    devices: int = Field(ge=2, le=100)
    profile: str = "pump"
    rate_hz: float = Field(default=10.0, gt=0, le=100)
    history_s: float = Field(default=120.0, ge=10)
    duration_s: float = Field(gt=0, le=3600)
    settle_s: float = Field(default=5.0, ge=0)
    seed: int = 0
    drifted: list[str] = Field(min_length=1)
    drift_at: float = Field(ge=0)
    recalibration: dict[str, float] = Field(min_length=1,
                                            description="channel -> offset in normal spreads")
    faults: list[DriftFault] = Field(default_factory=list)
    training: dict[str, Any] = Field(default_factory=dict)  # TrainingSpec fields
    agent_drift: dict[str, Any] = Field(default_factory=dict)  # the agents' [drift]
    policy: dict[str, Any] = Field(default_factory=dict)  # PUT /retrain-policies/default

    def device_ids(self) -> list[str]:
        return [f"{self.profile}-{i + 1:03d}" for i in range(self.devices)]


def load_drift_scenario(path: Path) -> DriftScenario:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        scenario = DriftScenario.model_validate(raw)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ValueError(f"{path}: {key}: {first['msg']}") from None
    ids = set(scenario.device_ids())
    for name in [*scenario.drifted, *(f.device for f in scenario.faults)]:
        if name not in ids:
            raise ValueError(f"{path}: device {name!r} is not in the fleet ({sorted(ids)})")
    return scenario


@dataclass
class _Watch:
    """What the hub showed over time: drift states per device, runs (hub time)."""

    states: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    first_drift: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)

    def poll(self, client: HubClient, now: float) -> None:
        for row in client.get_all("/drift"):
            device = row["device_id"]
            seen = self.states.setdefault(device, [])
            if not seen or seen[-1][1] != row["state"]:
                seen.append((now, row["state"]))
            if row["state"] == "drift" and device not in self.first_drift:
                self.first_drift[device] = (now, row.get("since"))
        for run in client.get_all("/retrain-runs"):
            self.runs[int(run["id"])] = run


def run_drift_scenario(scenario: DriftScenario, console: Console | None = None,
                       out_dir: Path | None = None) -> dict[str, Any]:
    console = console or Console()
    say: Say = console.print
    out = out_dir or Path("reports") / scenario.name
    workdir = Path(tempfile.mkdtemp(prefix=f"edgeloop-{scenario.name}-"))
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            broker = Broker(workdir=workdir / "mosquitto")
            broker.start()
            stack.callback(broker.close)
            hub = HubProcess(workdir / "hub", mqtt_port=broker.port,
                             extra_env={**broker.hub_env("edgeloop-hub"),
                                        "EDGELOOP_RETRAIN_TICK_S": "1.0",
                                        "EDGELOOP_ROLLOUT_TICK_S": "0.5"}).start()
            stack.callback(hub.stop)
            client = HubClient(hub.url, hub.admin_api_key, timeout=60.0)
            stack.callback(client.close)
            key = client.get("/signing-key")
            fleet = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
                          mqtt_auth=hub_enrollment(client, workdir / "bundles"),
                          state_root=workdir / "agents",
                          trust_keys={key["key_id"]: key["public_key"]},
                          overrides={"drift": dict(scenario.agent_drift)})
            for i, device_id in enumerate(scenario.device_ids()):
                fleet.add(DeviceSpec(device_id=device_id, profile=scenario.profile,
                                     seed=scenario.seed * 1000 + i, rate_hz=scenario.rate_hz,
                                     history_s=scenario.history_s))
            stack.callback(fleet.stop)
            fleet.start()
            say(f"[bold]{scenario.name}[/]: {scenario.devices} agents, "
                f"{len(scenario.drifted)} recalibrated at +{scenario.drift_at:g} s")
            wait_for_telemetry(client, fleet, min_seconds=scenario.history_s, timeout=180.0)
            name = f"{scenario.profile}-ae"
            ref = train_model(client, console, name=name, devices=list(fleet.devices),
                              until=time.time(), spec=scenario.training)
            model = publish_model(client, ref, say)
            rollout = roll_out(client, fleet, ref, say)
            client.put("/retrain-policies/default", scenario.policy)
            report = _phase(scenario, client, fleet, console, ref, model, rollout)
            report["timings_s"] = {"total": round(time.monotonic() - started, 1)}
            out.mkdir(parents=True, exist_ok=True)
            plot = _plot(report, out / "timeline.png")
            report["plots"] = [plot.name]
            (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
            say(f"[bold]report[/] {out / 'report.json'}")
            return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _phase(scenario: DriftScenario, client: HubClient, fleet: Fleet, console: Console,
           ref: tuple[str, int], model: dict[str, Any], rollout: dict[str, Any]
           ) -> dict[str, Any]:
    start = time.time() + 2.0
    drift_start = start + scenario.drift_at
    truths: list[GroundTruth] = []
    for f in scenario.faults:
        truths.append(fleet.devices[f.device].source.inject(
            f.kind, at=start + f.at, duration=f.duration or DEFAULT_DURATION_S[f.kind],
            severity=f.severity))
    for device_id in scenario.drifted:
        fleet.devices[device_id].source.recalibrate(drift_start, scenario.recalibration)
    watch = _Watch()
    end = start + scenario.duration_s + scenario.settle_s
    columns = (TextColumn("[bold]drift[/] {task.description}"), BarColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=end - time.time())
        total = end - time.time()
        while (now := time.time()) < end:
            watch.poll(client, now)
            states = {str(r.get("state")) for r in watch.runs.values()}
            bar.update(task, completed=total - (end - now), description=(
                f"{sum(1 for d in watch.first_drift if d in scenario.drifted)}/"
                f"{len(scenario.drifted)} drift seen, runs: {', '.join(sorted(states)) or '-'}"))
            time.sleep(1.0)
    watch.poll(client, time.time())
    fleet.stop()
    events = [Event.from_api(r) for r in client.get_all("/anomalies", limit=10_000)
              if r["ts_end"] >= start]
    return _report(scenario, start, drift_start, end, truths, events, watch, ref, model,
                   rollout, fleet.ground_truth())


def _report(scenario: DriftScenario, start: float, drift_start: float, end: float,
            truths: list[GroundTruth], events: list[Event], watch: _Watch,
            ref: tuple[str, int], model: dict[str, Any], rollout: dict[str, Any],
            all_truths: list[GroundTruth]) -> dict[str, Any]:
    drifted = set(scenario.drifted)
    runs = sorted(watch.runs.values(), key=lambda r: r["id"])
    promoted = [r for r in runs if r["state"] == "promoted" and set(r["devices"]) & drifted]
    recovered_at = promoted[0]["finished_at"] if promoted else None
    faults_of = {d: [t for t in truths if t.device_id == d] for d in scenario.device_ids()}

    def false_alarms(devices: set[str], a: float, b: float) -> dict[str, Any]:
        # an event is placed by its window's last reading, when it was raised: a window that
        # spans the recalibration is the drift's alarm, not the baseline's
        found = [e for e in events if e.device_id in devices and a <= e.ts_end < b
                 and not any(t.overlaps(e.ts_start, e.ts_end) for t in faults_of[e.device_id])]
        minutes = max(b - a, 1e-9) / 60.0 * len(devices)
        return {"false_alarms": len(found), "device_minutes": round(minutes, 2),
                "per_device_minute": round(len(found) / minutes, 4) if minutes else None}

    before = false_alarms(drifted, start, drift_start)
    during = false_alarms(drifted, drift_start, recovered_at or end)
    # each device from its own promotion on (a device whose new model was rolled back has not
    # recovered: it is left out of "after" and named in devices_not_recovered)
    promoted_at = {d: r["finished_at"] for r in reversed(promoted) for d in r["devices"]}
    per_device = {}
    for d in sorted(drifted):
        at = promoted_at.get(d)
        per_device[d] = {
            "before": false_alarms({d}, start, drift_start)["per_device_minute"],
            "during_drift": false_alarms({d}, drift_start, at or end)["per_device_minute"],
            "after": false_alarms({d}, at, end)["per_device_minute"] if at else None,
            "recovered_after_s": round(at - drift_start, 1) if at else None}
    recovered = [d for d in sorted(drifted) if d in promoted_at]
    after = None
    if recovered:
        counts = [false_alarms({d}, promoted_at[d], end) for d in recovered]
        minutes = sum(c["device_minutes"] for c in counts)
        total = sum(c["false_alarms"] for c in counts)
        after = {"false_alarms": total, "device_minutes": round(minutes, 2),
                 "per_device_minute": round(total / minutes, 4) if minutes else None}
    score = score_detections(all_truths, events)
    run_windows = [(r["created_at"], r["finished_at"] or end) for r in runs]
    during_runs = [o for o in score.outcomes
                   if any(o.fault.start < b and o.fault.end >= a for a, b in run_windows)]
    detection = {d: (since - drift_start if since is not None else seen - drift_start)
                 for d, (seen, since) in watch.first_drift.items() if d in drifted}
    base = before["per_device_minute"] or 0.0
    after_rate = after["per_device_minute"] if after else None
    report: dict[str, Any] = {
        "title": f"scenario {scenario.name}",
        "scenario": scenario.model_dump(mode="json"),
        "devices": scenario.devices, "drifted_devices": sorted(drifted),
        "phase_start": start, "drift_start": drift_start, "end": end,
        "model": model, "rollout": rollout,
        "false_alarm_rate_before": before["per_device_minute"],
        "false_alarm_rate_during_drift": during["per_device_minute"],
        "false_alarm_rate_after": after_rate,
        "false_alarms": {"before": before, "during_drift": during, "after": after,
                         "unit": "false-alarm events per drifted device-minute"},
        "per_device": per_device,
        "devices_not_recovered": sorted(drifted - set(recovered)),
        "drift_detected_seconds": {d: round(s, 1) for d, s in sorted(detection.items())},
        "drift_missed_devices": sorted(drifted - set(detection)),
        "false_drift_devices": sorted(d for d in watch.first_drift if d not in drifted),
        "retrain_triggered": len(runs),
        "retrain_runs": runs,
        "seconds_to_recover": round(recovered_at - drift_start, 1) if recovered_at else None,
        "faults_injected": len(score.outcomes),
        "faults_detected": sum(1 for o in score.outcomes if o.detected),
        "faults_during_retraining": len(during_runs),
        "faults_detected_during_retraining": sum(1 for o in during_runs if o.detected),
        "missed_faults": [o.fault.to_dict() for o in score.outcomes if not o.detected],
        "events": [{"device_id": e.device_id, "ts_start": e.ts_start, "ts_end": e.ts_end,
                    "score": e.score, "threshold": e.threshold} for e in events],
        "faults": [t.to_dict() for t in all_truths],
        "drift_states": {d: s for d, s in sorted(watch.states.items())},
    }
    report["bars"] = {
        "false_alarm_rate_after_within_1.5x_before": after_rate is not None
        and after_rate <= 1.5 * base,
        "every_drifted_device_detected": not report["drift_missed_devices"],
        "no_false_drift": not report["false_drift_devices"],
        "retrained_and_promoted": bool(promoted),
        "every_drifted_device_recovered": not report["devices_not_recovered"],
        "no_fault_missed_during_retraining":
            report["faults_detected_during_retraining"] == report["faults_during_retraining"],
    }
    return report


def _plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origin = float(report["phase_start"])
    devices = sorted({*report["drifted_devices"], *(f["device_id"] for f in report["faults"])})
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.55 * len(devices)))
    rows = {d: i for i, d in enumerate(devices)}
    for d, states in report["drift_states"].items():
        if d not in rows:
            continue
        spans = [*states, (report["end"], "end")]
        for (a, state), (b, _) in zip(spans, spans[1:], strict=False):
            if state == "drift":
                ax.barh(rows[d], b - a, left=a - origin, height=0.6, color="#f5c26b",
                        label="drift state (hub view)")
    for f in report["faults"]:
        if f["device_id"] in rows:
            ax.barh(rows[f["device_id"]], f["end"] - f["start"], left=f["start"] - origin,
                    height=0.8, color="#e45756", alpha=0.5, label="injected fault")
    for e in report["events"]:
        if e["device_id"] in rows:
            ax.plot(e["ts_start"] - origin, rows[e["device_id"]], "k|", markersize=9,
                    label="anomaly event")
    ax.axvline(report["drift_start"] - origin, color="#4c78a8", linestyle="--",
               label="recalibration")
    for run in report["retrain_runs"]:
        for step in run["steps"]:
            if step["step"] in ("triggered", "canary", "promoted", "rolled_back", "failed"):
                ax.axvline(step["at"] - origin, color="#54a24b", linestyle=":", linewidth=1)
                ax.text(step["at"] - origin, len(devices) - 0.4, step["step"], rotation=90,
                        fontsize=7, va="top", color="#2f6b2b")
    names = [f"{d} (recalibrated)" if d in report["drifted_devices"] else d for d in devices]
    ax.set_yticks(range(len(devices)), names, fontsize=8)
    ax.set_xlabel("seconds since the phase began")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    ax.set_title(f"{report['title']}: far before {report['false_alarm_rate_before']}, "
                 f"during {report['false_alarm_rate_during_drift']}, after "
                 f"{report['false_alarm_rate_after']} per device-minute", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
