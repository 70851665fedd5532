"""``simulator demo``: the whole loop end to end, measured.

A private mosquitto, ``cloud-hub serve`` as a child process, N real edge agents in this process
with simulated pumps; the agents stream normal operation, the hub trains, quantizes, checks
parity and publishes a model, a rollout brings it to every device, faults with known ground truth
are injected, and the report is computed from what the hub stored.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from simulator.loop import (
    LOOP_SPEC,
    collect_results,
    publish_model,
    roll_out,
    schedule_faults,
    train_model,
    wait_for_telemetry,
    watch_faults,
)
from simulator.report import Timeline, build_report, write_report

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    devices: int = 10
    duration_s: float = 60.0  # fault-injection phase
    rate_hz: float = 10.0
    history_s: float = 120.0  # normal operation each device has recorded before it connects
    profile: str = "pump"
    seed: int = 0
    model_name: str = "pump-ae"
    out_dir: Path = Path("reports/demo")
    fault_kinds: tuple[str, ...] = ("spike", "drift", "stuck", "noise")
    fault_slot_s: float = 25.0  # one fault per device per slot
    settle_s: float = 6.0  # detection time after the last fault ends
    spec: dict[str, Any] = field(default_factory=lambda: dict(LOOP_SPEC))
    keep_workdir: bool = False

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError(f"--devices {self.devices} must be at least 1")
        if self.duration_s < self.fault_slot_s:
            raise ValueError(
                f"--duration {self.duration_s:g} must be at least one fault slot "
                f"({self.fault_slot_s:g} s)"
            )


def run_demo(opts: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the report (also written to ``opts.out_dir``)."""
    console = console or Console()
    say: Callable[[str], None] = console.print
    timeline = Timeline()
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-demo-"))
    t_all = time.monotonic()
    try:
        with ExitStack() as stack:
            t = time.monotonic()
            broker = Broker(workdir=workdir / "mosquitto")
            broker.start()
            stack.callback(broker.close)
            say(f"[bold]broker[/] mosquitto on 127.0.0.1:{broker.port} ({broker.transport}, "
                f"{broker.auth})")
            hub = HubProcess(workdir / "hub", mqtt_port=broker.port,
                             extra_env=broker.hub_env("edgeloop-hub"))
            say("[bold]hub[/] starting cloud-hub serve …")
            hub.start()
            stack.callback(_stop_hub, hub, opts.out_dir, say)
            client = HubClient(hub.url, hub.admin_api_key, timeout=60.0)
            stack.callback(client.close)
            key = client.get("/signing-key")
            say(f"[bold]hub[/] healthy at {hub.url}, signing key {key['key_id']}")
            timeline.add("start_broker_and_hub", time.monotonic() - t)

            t = time.monotonic()
            fleet = Fleet(
                mqtt_host=broker.host, mqtt_port=broker.port, state_root=workdir / "agents",
                trust_keys={key["key_id"]: key["public_key"]},
                mqtt_auth=hub_enrollment(client, workdir / "bundles"),  # as an operator would
            )
            for i in range(opts.devices):
                fleet.add(DeviceSpec(
                    device_id=f"{opts.profile}-{i + 1:03d}", profile=opts.profile,
                    seed=opts.seed * 1000 + i, rate_hz=opts.rate_hz, history_s=opts.history_s,
                ))
            stack.callback(fleet.stop)
            fleet.start()
            say(f"[bold]fleet[/] {opts.devices} agents started ({opts.profile}, "
                f"{opts.rate_hz:g} Hz × {len(next(iter(fleet.devices.values())).source.channels)}"
                f" channels, {opts.history_s:g} s of recorded history each)")
            device_ids = list(fleet.devices)
            wait_for_telemetry(client, fleet, min_seconds=opts.history_s, timeout=120.0)
            timeline.add("fleet_and_training_data", time.monotonic() - t)

            t = time.monotonic()
            model_ref = train_model(client, console, name=opts.model_name, devices=device_ids,
                                    until=time.time(), spec=opts.spec)
            timeline.add("training", time.monotonic() - t)
            t = time.monotonic()
            model = publish_model(client, model_ref, say)
            rollout = roll_out(client, fleet, model_ref, say)
            timeline.add("publish_and_rollout", time.monotonic() - t)

            t = time.monotonic()
            phase_start = time.time()
            faults = schedule_faults(fleet, opts.fault_kinds, start=phase_start + 2.0,
                                     duration_s=opts.duration_s, slot_s=opts.fault_slot_s,
                                     seed=opts.seed)
            say(f"[bold]faults[/] {len(faults)} scheduled over {opts.duration_s:g} s: "
                + ", ".join(f"{k} ×{sum(f.kind == k for f in faults)}" for k in opts.fault_kinds))
            watch_faults(client, console, end=phase_start + opts.duration_s + opts.settle_s)
            timeline.add("fault_injection", time.monotonic() - t)

            t = time.monotonic()
            say("[bold]fleet[/] stopping agents (each flushes its outbox) …")
            fleet.stop()
            results = collect_results(client, fleet, model_ref, say)
            timeline.add("drain_and_collect", time.monotonic() - t)

            t = time.monotonic()
            plots = results.plots(opts.out_dir, phase_start, fleet.ground_truth())
            timeline.add("plots", time.monotonic() - t)
            report = build_report(
                devices=opts.devices,
                duration_s=opts.duration_s,
                accounts=results.accounts,
                score=results.score,
                model=model,
                rollout=rollout,
                faults=results.faults,
                extra={
                    "title": "edgeloop demo",
                    "transport": broker.transport,
                    "auth": broker.auth,
                    "profile": opts.profile,
                    "rate_hz": opts.rate_hz,
                    "history_s": opts.history_s,
                    "training_spec": opts.spec,
                    "hub_metrics": results.metrics,
                    "dead_letters": results.dead_letters,
                    "timings_s": {**timeline.phases,
                                  "total": round(time.monotonic() - t_all, 2)},
                },
            )
            path = write_report(report, opts.out_dir, plots)
            say(f"[bold]report[/] {path}")
    finally:
        if opts.keep_workdir:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def _stop_hub(hub: HubProcess, out_dir: Path, say: Callable[[str], None]) -> None:
    code = hub.stop()
    out_dir.mkdir(parents=True, exist_ok=True)
    if hub.log_path.exists():
        shutil.copyfile(hub.log_path, out_dir / "hub.log")
    if code not in (0, None):
        say(f"[yellow]hub exited with code {code}; its log is in {out_dir / 'hub.log'}[/]")
