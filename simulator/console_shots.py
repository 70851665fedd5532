"""Screenshots of the operations console for the README, taken from a real run.

    .venv/bin/python -m simulator.console_shots --out docs

A private mosquitto, ``cloud-hub serve`` as a child process and eight real edge agents with
simulated pumps; the hub trains a real model, publishes it and rolls it out, faults are
injected, the agents detect them and the hub groups them into incidents; a second model is
rolling out (held in its first wave) and a webhook receiver is down. Then chromium (Debian's,
through Playwright) logs in and photographs the fleet, the inbox, an incident, a device, a
rollout and a model.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.fleet import DeviceSpec, Fleet
from simulator.hub_process import HubProcess
from simulator.loop import publish_model, roll_out, train_model, wait_for_telemetry
from simulator.ports import free_port

__all__ = ["CHROMIUM_ARGS", "chromium_path", "main", "take_screenshots"]

log = logging.getLogger(__name__)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--disable-dev-shm-usage"]
SPEC = {"family": "dense_ae", "window": 32, "hidden": 64, "latent": 8, "epochs": 12,
        "threshold_quantile": 0.999, "threshold_factor": 2.0, "quantization": "int8"}
GROUPS = {"plant-a": ["line-1", "pump"], "plant-b": ["line-2", "pump"]}


def chromium_path() -> str:
    path = os.environ.get("EDGELOOP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise SystemExit("chromium is not installed (apt-get install chromium; `make setup`)")
    return path


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)  # polling the hub's REST API
    raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")


def build_scene(client: HubClient, fleet: Fleet, console: Console) -> dict[str, Any]:
    """Train, publish, roll out, inject faults; returns ids the screenshots need."""
    say = console.print
    devices = list(fleet.devices)
    for i, device_id in enumerate(devices):
        group = "plant-a" if i < len(devices) // 2 else "plant-b"
        client.patch(f"/devices/{device_id}", {"group": group, "tags": GROUPS[group]})
    wait_for_telemetry(client, fleet, min_seconds=120.0, timeout=120.0)
    first = train_model(client, console, name="pump-ae", devices=devices, until=time.time(),
                        spec=SPEC)
    publish_model(client, first, say)
    roll_out(client, fleet, first, say)

    receiver = f"http://127.0.0.1:{free_port()}/edgeloop"  # nobody listens: failures
    client.post("/webhooks", {"name": "on-call", "url": receiver, "group": "plant-a"})
    # Faults on three devices, a few seconds apart; the agents detect them on their own.
    now = time.time()
    for delay, (device_id, kind) in enumerate((("pump-003", "spike"), ("pump-006", "noise"),
                                               ("pump-002", "drift"))):
        fleet.devices[device_id].source.inject(kind, at=now + 3 + 6 * delay, severity=2.0)
    incidents = _wait(lambda: len(client.get("/incidents")) >= 2 and client.get("/incidents"),
                      120.0, "incidents from the injected faults")
    say(f"[bold]incidents[/] {len(incidents)} so far")
    oldest = min(incidents, key=lambda i: i["id"])
    client.post(f"/incidents/{oldest['id']}/acknowledge",
                {"note": "maintenance is on its way"})

    second = train_model(client, console, name="pump-ae", devices=devices, until=time.time(),
                         spec={**SPEC, "hidden": 96, "threshold_factor": 2.5})
    publish_model(client, second, say)
    rollout = client.post("/rollouts", {
        "model": {"name": second[0], "version": second[1]},
        "policy": {"canary_size": 2, "wave_size": 3, "min_observation_s": 8,
                   "stage_timeout_s": 600},
    })
    _wait(lambda: client.get(f"/rollouts/{rollout['id']}")["stage"] >= 1, 120.0,
          "the second rollout to pass its canary")
    client.post(f"/rollouts/{rollout['id']}/pause")
    time.sleep(8)  # more events, and the incidents' charts fill in
    newest = max(client.get("/incidents"), key=lambda i: i["events"])
    return {"incident": newest["id"], "device": newest["device_id"], "rollout": rollout["id"],
            "model": f"{second[0]}/{second[1]}"}


def take_screenshots(base_url: str, api_key: str, out: Path, scene: dict[str, Any]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = [("console-fleet.png", "/ui/fleet", None),
             ("console-inbox.png", "/ui/inbox", None),
             ("console-incident.png", f"/ui/incidents/{scene['incident']}",
              "#incident-chart canvas"),
             ("console-device.png", f"/ui/devices/{scene['device']}", "#device-chart canvas"),
             ("console-rollout.png", f"/ui/rollouts/{scene['rollout']}", None),
             ("console-model.png", f"/ui/models/{scene['model']}", None)]
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(base_url + "/ui/login")
        page.fill("input[name=api_key]", api_key)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/fleet")
        for name, path, wait_for in shots:
            page.goto(base_url + path)
            page.wait_for_load_state("networkidle")
            if wait_for:
                page.wait_for_selector(wait_for, timeout=20_000)
            page.wait_for_timeout(300)
            target = out / name
            page.screenshot(path=str(target), full_page=True)
            written.append(target)
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.console_shots",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-shots-"))
    try:
        with ExitStack() as stack:
            broker = Broker(workdir=workdir / "mosquitto")
            broker.start()
            stack.callback(broker.close)
            hub = HubProcess(workdir / "hub", mqtt_port=broker.port, extra_env={
                "EDGELOOP_INCIDENT_GAP_S": "20", "EDGELOOP_INCIDENT_QUIET_S": "600",
                "EDGELOOP_WEBHOOK_BACKOFF_S": "1", "EDGELOOP_WEBHOOK_MAX_ATTEMPTS": "3"})
            hub.start()
            stack.callback(hub.stop)
            client = HubClient(hub.url, hub.admin_api_key, timeout=60.0)
            stack.callback(client.close)
            key = client.get("/signing-key")
            fleet = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
                          state_root=workdir / "agents",
                          trust_keys={key["key_id"]: key["public_key"]})
            for i in range(args.devices):
                fleet.add(DeviceSpec(device_id=f"pump-{i + 1:03d}", seed=i, rate_hz=10.0,
                                     history_s=180.0))
            stack.callback(fleet.stop)
            fleet.start()
            scene = build_scene(client, fleet, console)
            for path in take_screenshots(hub.url, hub.admin_api_key, args.out, scene):
                console.print(f"wrote {path}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
