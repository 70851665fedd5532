"""The attack scenario: a secure fleet streams while every attack of issue 10 is tried on it.

``simulator run simulator/scenarios/attacks.toml`` starts the secure broker, the hub and honest
agents enrolled through the hub, trains and rolls out two signed model versions, and then, while
the fleet streams, tries each attack with the access an attacker would have:

- a compromised but enrolled device ("mallory", its own credential): impersonating another
  device, writing ``desired``, ``models/#`` or hub status (a forged hub session), taking over
  the hub's or a device's client id, oversized and malformed payloads;
- nobody (no credential), and a credential made outside the hub (an unenrolled device);
- a stolen hub-level broker credential ("rogue-hub"): a retained manifest that someone other
  than the hub put there: unsigned, signed by an unknown key, an older signed version
  (downgrade), and an older version replayed after the hub retired it. Only the agent can
  refuse these;
- a device that is revoked while it is connected, and reconnects.

It writes ``reports/attacks/report.json``: ``attacks`` [{name, refused, refused_by, detail}],
``readings_lost`` and ``false_alarms`` of the honest devices, and ``revoke_seconds`` (from the
revoke command until the broker refuses the device's credential).

The attacks themselves are in :mod:`simulator.attack_catalogue`; this module sets up the fleet,
tries them in order, and counts what the honest devices lost and the false alarms they raised.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import tomllib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table

from cloud_hub.cli.client import HubClient
from simulator.attack_catalogue import AttackResult, Attacks, Say
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from simulator.loop import LoopError, publish_model, train_model, wait_for_telemetry
from simulator.probe import wait_until

__all__ = ["AttackScenario", "load_attack_scenario", "print_attack_summary", "run_attacks"]

_HUB_ID = "edgeloop-hub"


class AttackScenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(pattern=r"^attacks$")
    name: str = Field(default="attacks", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    description: str = ""
    devices: int = Field(default=3, ge=2, le=50, description="honest agents")
    rate_hz: float = Field(default=10.0, gt=0, le=100)
    history_s: float = Field(default=60.0, ge=10, description="telemetry before training")
    settle_s: float = Field(default=5.0, ge=0, description="streaming after the last attack")
    seed: int = 0
    training: dict[str, Any] = Field(default_factory=dict)  # TrainingSpec fields


_SPEC: dict[str, Any] = {"family": "dense_ae", "window": 16, "hidden": 32, "latent": 8,
                         "epochs": 5, "quantization": "int8", "compare_modes": False}


def load_attack_scenario(path: Path) -> AttackScenario:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        return AttackScenario.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from None




def _activate(client: HubClient, device_ids: list[str], ref: tuple[str, int], say: Say,
              timeout: float = 180.0) -> None:
    """The model on every device, set directly (no staged rollout: its anomaly-rate policy
    is not what this scenario is about, and a young model could make it stop)."""
    name, version = ref
    for device_id in device_ids:
        client.put(f"/devices/{device_id}/desired", {"model": {"name": name, "version": version}})

    def running() -> bool:
        return all((d.get("active_model") or {}).get("version") == version
                   and d.get("reported_state") == "active"
                   for d in (client.get(f"/devices/{i}") for i in device_ids))

    if not wait_until(running, timeout):
        raise LoopError(f"{name} v{version} not active on every device within {timeout:g}s")
    say(f"[bold]model[/] {name} v{version} active on {len(device_ids)} devices")


def _lost_and_false_alarms(client: HubClient, fleet: Fleet, since: float,
                           say: Say) -> dict[str, Any]:
    """Stop the honest agents (they flush), wait for the hub; what never arrived, and the
    anomalies raised on honest devices while nothing was wrong with their sensors."""
    fleet.stop()
    generated = fleet.samples_generated()

    def stored() -> dict[str, int]:
        return {str(r["device_id"]): int(r["readings"])
                for r in client.get_all("/telemetry/summary")}

    def complete() -> dict[str, int] | None:
        now = stored()
        return now if all(now.get(d, 0) >= n for d, n in generated.items()) else None

    got: dict[str, int] = wait_until(complete, 60.0) or stored()
    lost = {d: max(0, n - got.get(d, 0)) for d, n in generated.items()}
    alarms = [a for a in client.get_all("/anomalies", limit=1000)
              if a["device_id"] in generated and float(a.get("ts_end") or 0) >= since]
    by_device = {d: sum(a["device_id"] == d for a in alarms) for d in generated}
    say(f"[bold]honest devices[/] {sum(generated.values())} readings generated, "
        f"{sum(lost.values())} lost, {len(alarms)} false alarm(s)")
    return {"readings_generated": sum(generated.values()),
            "readings_stored": sum(got.get(d, 0) for d in generated),
            "readings_lost": sum(lost.values()), "readings_lost_by_device": lost,
            "false_alarms": len(alarms), "false_alarms_by_device": by_device}


def run_attacks(scenario: AttackScenario, console: Console | None = None,
                out_dir: Path | None = None) -> dict[str, Any]:
    console = console or Console()
    say: Say = console.print
    out = out_dir or Path("reports") / scenario.name
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-attacks-"))
    spec = {**_SPEC, **scenario.training}
    t_all = time.monotonic()
    try:
        with ExitStack() as stack:
            broker = Broker(workdir=workdir / "mosquitto")
            broker.start()
            stack.callback(broker.close)
            hub = HubProcess(workdir / "hub", mqtt_port=broker.port,
                             extra_env=broker.hub_env(_HUB_ID)).start()
            stack.callback(hub.stop)
            client = HubClient(hub.url, hub.admin_api_key, timeout=60.0)
            stack.callback(client.close)
            key = client.get("/signing-key")
            fleet = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
                          mqtt_auth=hub_enrollment(client, workdir / "bundles"),
                          state_root=workdir / "agents",
                          trust_keys={key["key_id"]: key["public_key"]})
            for i in range(scenario.devices):
                fleet.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", profile="pump",
                                     seed=scenario.seed * 1000 + i, rate_hz=scenario.rate_hz,
                                     history_s=scenario.history_s))
            stack.callback(fleet.stop)
            fleet.start()
            say(f"[bold]{scenario.name}[/]: {scenario.devices} honest agents on a "
                f"{broker.transport} broker ({broker.auth}), enrolled by the hub")
            wait_for_telemetry(client, fleet, min_seconds=scenario.history_s, timeout=180.0)
            ids = sorted(fleet.devices)
            models = []
            for round_ in range(2):  # two signed versions: the older one is for rollbacks
                ref = train_model(client, console, name="pump-ae", devices=ids,
                                  until=time.time(), spec={**spec, "seed": round_})
                publish_model(client, ref, say)
                _activate(client, ids, ref, say)
                models.append(ref)
            phase_start = time.time()
            attacks = Attacks(broker, client, fleet, workdir, models, say, hub_id=_HUB_ID)
            stack.callback(attacks.close)
            results: list[AttackResult] = [attacks.impersonation()]
            for step in (attacks.writes, attacks.takeovers, attacks.payloads,
                         attacks.unenrolled, attacks.forged_models, attacks.older_models):
                results += step()
            results.append(attacks.revoked_reconnects())
            for r in results:
                say(f"  {'[green]refused[/]' if r.refused else '[red]NOT refused[/]'} "
                    f"{r.name} ({r.refused_by or '-'}): {r.detail}")
            time.sleep(scenario.settle_s)
            honest = _lost_and_false_alarms(client, fleet, phase_start, say)
            report = {
                "title": f"scenario {scenario.name}",
                "scenario": scenario.model_dump(mode="json"),
                "transport": broker.transport, "auth": broker.auth,
                "devices": scenario.devices,
                "attacks": [r.to_dict() for r in results],
                "all_refused": all(r.refused for r in results),
                "not_refused": [r.name for r in results if not r.refused],
                **honest,
                "revoke_seconds": attacks.revoke_seconds,
                "revoke_kick_seconds": attacks.revoke_kick_seconds,
                "models": [{"name": n, "version": v} for n, v in models],
                "duration_s": round(time.monotonic() - t_all, 1),
            }
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            say(f"[bold]report[/] {out / 'report.json'}")
            return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_attack_summary(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=str(report.get("title")))
    for column in ("attack", "refused", "by", "detail"):
        table.add_column(column)
    for a in report["attacks"]:
        table.add_row(a["name"], "[green]yes[/]" if a["refused"] else "[red]NO[/]",
                      a["refused_by"] or "-", a["detail"][:90])
    console.print(table)
    console.print(f"honest devices: readings lost {report['readings_lost']}, false alarms "
                  f"{report['false_alarms']}; revoke to refusal {report['revoke_seconds']} s")

