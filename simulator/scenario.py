"""Scenarios as TOML files: fleet mix, duration, fault schedule, network chaos, mid-run rollout.

``simulator run scenario.toml`` loads one with :func:`load_scenario` (validated; unknown keys are
refused with their name) and runs it with :func:`run_scenario`: broker, hub, real agents (each
behind its own :class:`~simulator.netem.LinkProxy` so its network can be cut or slowed), one model
per profile trained, published and rolled out, then the schedule of faults and chaos actions,
then the report (``report.json``, ``summary.md``, plots) in ``reports/<name>/``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.faults import DEFAULT_DURATION_S, FaultKind
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from simulator.loop import (
    LOOP_SPEC,
    ModelRef,
    collect_results,
    publish_model,
    roll_out,
    train_model,
    wait_for_telemetry,
)
from simulator.netem import LinkProxy
from simulator.profiles import PROFILES
from simulator.report import Timeline, build_report, write_report

__all__ = ["Scenario", "ScenarioError", "load_scenario", "run_scenario"]



class ScenarioError(ValueError):
    """A scenario file that cannot be run; the text names the file, key and value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetGroup(_Strict):
    profile: str
    count: int = Field(ge=1, le=500)
    rate_hz: float = Field(default=10.0, gt=0, le=100)

    @model_validator(mode="after")
    def _known_profile(self) -> FleetGroup:
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r} is unknown; known: {sorted(PROFILES)}")
        return self


class FaultEntry(_Strict):
    at: float = Field(ge=0, description="seconds after the fault phase begins")
    kind: FaultKind
    device: str | None = None  # one device, or every device of `profile`, or `count` of them
    profile: str | None = None
    count: int | None = Field(default=None, ge=1)
    duration: float | None = Field(default=None, gt=0)
    severity: float = Field(default=1.0, gt=0)
    channels: list[str] = Field(default_factory=list)


class ChaosEntry(_Strict):
    at: float = Field(ge=0)
    action: Literal["broker_restart", "device_offline", "slow_device", "device_restart",
                    "rollout"]
    device: str | None = None
    duration: float = Field(default=10.0, ge=0, description="how long the disturbance lasts")
    delay_s: float = Field(default=0.3, ge=0, description="slow_device: added per direction")
    profile: str | None = None  # rollout: which profile's model is retrained (default: first)

    @model_validator(mode="after")
    def _needs_device(self) -> ChaosEntry:
        if self.action in ("device_offline", "slow_device", "device_restart") and not self.device:
            raise ValueError(f"chaos action {self.action!r} needs 'device'")
        return self


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    description: str = ""
    duration_s: float = Field(gt=0, le=3600, description="fault/chaos phase")
    history_s: float = Field(default=120.0, ge=10)
    settle_s: float = Field(default=6.0, ge=0)
    seed: int = 0
    fleet: list[FleetGroup] = Field(min_length=1)
    training: dict[str, Any] = Field(default_factory=dict)  # TrainingSpec fields
    faults: list[FaultEntry] = Field(default_factory=list)
    chaos: list[ChaosEntry] = Field(default_factory=list)

    def device_specs(self) -> list[DeviceSpec]:
        specs: list[DeviceSpec] = []
        for g in self.fleet:
            for i in range(g.count):
                specs.append(DeviceSpec(device_id=f"{g.profile}-{i + 1:03d}", profile=g.profile,
                                        seed=self.seed * 1000 + len(specs), rate_hz=g.rate_hz,
                                        history_s=self.history_s))
        return specs

    @model_validator(mode="after")
    def _references_exist(self) -> Scenario:
        ids = {s.device_id for s in self.device_specs()}
        profiles = {g.profile for g in self.fleet}
        entries: list[tuple[str, int, FaultEntry | ChaosEntry]] = [
            *(("faults", i, f) for i, f in enumerate(self.faults)),
            *(("chaos", i, c) for i, c in enumerate(self.chaos)),
        ]
        for where, i, e in entries:
            if e.device is not None and e.device not in ids:
                raise ValueError(f"{where}[{i}].device {e.device!r} is not in the fleet")
            if e.profile is not None and e.profile not in profiles:
                raise ValueError(f"{where}[{i}].profile {e.profile!r} is not in the fleet")
            if e.at > self.duration_s:
                raise ValueError(f"{where}[{i}].at {e.at} is after duration_s {self.duration_s}")
        return self


def load_scenario(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ScenarioError(f"{path}: {key}: {first['msg']}{more}") from None


class _Chaos:
    """Runs the chaos schedule against the broker, the proxies and the fleet; keeps a log."""

    def __init__(self, broker: Broker, proxies: dict[str, LinkProxy], fleet: Fleet,
                 retrain: Callable[[ChaosEntry], dict[str, Any]], say: Callable[[str], None]):
        self.broker, self.proxies, self.fleet = broker, proxies, fleet
        self.retrain, self.say = retrain, say
        self.log: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def begin(self, c: ChaosEntry, at: float) -> float | None:
        """Start an action; returns when it should end (None: it ends by itself)."""
        entry: dict[str, Any] = {"action": c.action, "device": c.device, "at": round(at, 3)}
        self.log.append(entry)
        self.say(f"[magenta]chaos[/] {c.action}" + (f" {c.device}" if c.device else ""))
        if c.action == "broker_restart":
            self.broker.stop()
            return at + c.duration
        if c.action == "device_offline":
            assert c.device is not None
            self.proxies[c.device].cut()
            return at + c.duration
        if c.action == "slow_device":
            assert c.device is not None
            self.proxies[c.device].delay_s = c.delay_s
            return at + c.duration
        if c.action == "device_restart":
            assert c.device is not None
            self.fleet.stop([c.device])
            return at + c.duration
        thread = threading.Thread(target=lambda: entry.update(self.retrain(c)), daemon=True)
        thread.start()
        self.threads.append(thread)
        return None

    def end(self, c: ChaosEntry) -> None:
        self.say(f"[magenta]chaos[/] end of {c.action}" + (f" {c.device}" if c.device else ""))
        if c.action == "broker_restart":
            self.broker.start()
        elif c.action == "device_offline" and c.device:
            self.proxies[c.device].restore()
        elif c.action == "slow_device" and c.device:
            self.proxies[c.device].delay_s = 0.0
        elif c.action == "device_restart" and c.device:
            self.fleet.restart(c.device)


def run_scenario(scenario: Scenario, console: Console | None = None,
                 out_dir: Path | None = None) -> dict[str, Any]:
    console = console or Console()
    say: Callable[[str], None] = console.print
    out = out_dir or Path("reports") / scenario.name
    spec = {**LOOP_SPEC, **scenario.training}
    timeline = Timeline()
    workdir = Path(tempfile.mkdtemp(prefix=f"edgeloop-{scenario.name}-"))
    t_all = time.monotonic()
    try:
        with ExitStack() as stack:
            broker = Broker(workdir=workdir / "mosquitto")
            broker.start()
            stack.callback(broker.close)
            hub = HubProcess(workdir / "hub", mqtt_port=broker.port,
                             extra_env=broker.hub_env("edgeloop-hub")).start()
            stack.callback(hub.stop)
            client = HubClient(hub.url, hub.admin_api_key, timeout=60.0)
            stack.callback(client.close)
            key = client.get("/signing-key")
            fleet = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
                          mqtt_auth=hub_enrollment(client, workdir / "bundles"),
                          state_root=workdir / "agents",
                          trust_keys={key["key_id"]: key["public_key"]})
            proxies: dict[str, LinkProxy] = {}
            for s in scenario.device_specs():
                proxy = LinkProxy(broker.host, broker.port, name=s.device_id)
                stack.callback(proxy.close)
                proxies[s.device_id] = proxy
                fleet.add(s, mqtt_port=proxy.port)
            stack.callback(fleet.stop)
            fleet.start()
            say(f"[bold]{scenario.name}[/]: {len(fleet.devices)} agents, "
                + ", ".join(f"{g.count} {g.profile}" for g in scenario.fleet))
            wait_for_telemetry(client, fleet, min_seconds=scenario.history_s, timeout=180.0)

            by_profile: dict[str, list[str]] = {}
            for d in fleet.devices.values():
                by_profile.setdefault(d.spec.profile, []).append(d.device_id)
            models: dict[str, dict[str, Any]] = {}
            rollouts: dict[str, dict[str, Any]] = {}
            refs: dict[str, ModelRef] = {}
            t = time.monotonic()
            for profile, ids in by_profile.items():
                refs[profile] = train_model(client, console, name=f"{profile}-ae", devices=ids,
                                            until=time.time(), spec=spec)
                models[profile] = publish_model(client, refs[profile], say)
                rollouts[profile] = roll_out(client, _Subset(fleet, ids), refs[profile], say)
            timeline.add("train_publish_rollout", time.monotonic() - t)
            phase_start = time.time() + 2.0

            def retrain(c: ChaosEntry) -> dict[str, Any]:
                profile = c.profile or scenario.fleet[0].profile
                ids = by_profile[profile]
                ref = train_model(client, Console(quiet=True), name=f"{profile}-ae",
                                  devices=ids, until=phase_start,
                                  spec={**spec, "seed": int(spec.get("seed", 0)) + 1})
                published = publish_model(client, ref, say)
                result = roll_out(client, _Subset(fleet, ids), ref, say)
                refs[profile] = ref
                return {"model": published, "rollout": result}

            chaos = _Chaos(broker, proxies, fleet, retrain, say)
            truths = _schedule_faults(scenario, fleet, phase_start)
            say(f"[bold]faults[/] {len(truths)} scheduled, {len(scenario.chaos)} chaos actions")
            _run_schedule(scenario, chaos, console, phase_start)
            for thread in chaos.threads:
                thread.join(300.0)
            timeline.add("fault_phase", time.monotonic() - t)

            fleet.stop()
            first = scenario.fleet[0].profile
            results = collect_results(client, fleet, refs[first], say)
            model_of = {d: refs[p] for p, ids in by_profile.items() for d in ids}
            plots = results.plots(out, phase_start, fleet.ground_truth(), model_of=model_of)
            report = build_report(
                devices=len(fleet.devices), duration_s=scenario.duration_s,
                accounts=results.accounts, score=results.score, model=models[first],
                rollout=_overall(rollouts), faults=results.faults,
                extra={
                    "title": f"scenario {scenario.name}",
                    "transport": broker.transport,
                    "auth": broker.auth,
                    "scenario": scenario.model_dump(mode="json"),
                    "models": models, "rollouts": rollouts, "chaos": chaos.log,
                    "hub_metrics": results.metrics, "dead_letters": results.dead_letters,
                    "reconnects": {d: int(s.get("reconnects") or 0)
                                   for d, s in results.statuses.items()},
                    "timings_s": {**timeline.phases,
                                  "total": round(time.monotonic() - t_all, 2)},
                },
            )
            write_report(report, out, plots)
            say(f"[bold]report[/] {out / 'report.json'}")
            return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Subset(Fleet):
    """A view of some of a fleet's devices (for a per-profile rollout)."""

    def __init__(self, fleet: Fleet, ids: list[str]) -> None:
        super().__init__(mqtt_host=fleet.mqtt_host, mqtt_port=fleet.mqtt_port,
                         state_root=fleet.state_root, trust_keys=fleet.trust_keys,
                         topic_prefix=fleet.topic_prefix,
                         devices={i: fleet.devices[i] for i in ids})


def _overall(rollouts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The fleet-wide rollout figures of per-profile rollouts (updated: sum; time: slowest)."""
    times = [r.get("seconds_to_full") for r in rollouts.values()]
    return {
        "devices_updated": sum(int(r.get("devices_updated") or 0) for r in rollouts.values()),
        "devices_total": sum(int(r.get("devices_total") or 0) for r in rollouts.values()),
        "seconds_to_full": None if None in times else max(t for t in times if t is not None),
        "per_profile": rollouts,
    }


def _schedule_faults(scenario: Scenario, fleet: Fleet, phase_start: float) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(scenario.seed)
    truths = []
    for f in scenario.faults:
        if f.device:
            targets = [f.device]
        else:
            pool = [d.device_id for d in fleet.devices.values()
                    if f.profile is None or d.spec.profile == f.profile]
            targets = (list(rng.choice(pool, size=min(f.count, len(pool)), replace=False))
                       if f.count else pool)
        for device_id in targets:
            truths.append(fleet.devices[str(device_id)].source.inject(
                f.kind, at=phase_start + f.at,
                duration=f.duration or DEFAULT_DURATION_S[f.kind],
                severity=f.severity, channels=f.channels))
    return truths


def _run_schedule(scenario: Scenario, chaos: _Chaos, console: Console,
                  phase_start: float) -> None:
    pending = sorted(scenario.chaos, key=lambda c: c.at)
    ending: list[tuple[float, ChaosEntry]] = []
    end = phase_start + scenario.duration_s + scenario.settle_s
    total = end - time.time()
    columns = (TextColumn("[bold]scenario[/] {task.description}"), BarColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("faults and chaos", total=total)
        while time.time() < end or ending:
            now = time.time()
            while pending and phase_start + pending[0].at <= now:
                c = pending.pop(0)
                stop_at = chaos.begin(c, now)
                if stop_at is not None:
                    ending.append((stop_at, c))
            for item in [e for e in ending if e[0] <= now]:
                ending.remove(item)
                chaos.end(item[1])
            bar.update(task, completed=min(total, total - (end - time.time())))
            time.sleep(0.1)
