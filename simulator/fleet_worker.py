"""One process of a fleet split over several (:mod:`simulator.fleet_pool`): its share of the
devices, driven by its own shard threads, following its driver's commands.

A thousand device cores in one interpreter share one lock: on a loaded machine the process
falls behind its devices' readings by seconds. Split over one process per core, each share
has a CPU of its own. The driver writes the share's description to a JSON file and then talks
in JSON lines: commands on this process's stdin, answers on its stdout (nothing else is
written there; logging goes to stderr). It stops at ``stop`` or at the end of stdin (its
driver died).

    python -m simulator.fleet_worker CONFIG

Commands (``{"cmd": ...}``) and their answers (``{"event": ...}``):

- at start, without a command: ``connected`` (``devices`` connected, ``seconds``);
- ``inject`` (``faults``: device_id, kind, at, duration): ``injected`` (``truths``, each a
  :class:`~simulator.scoring.GroundTruth` as a dict);
- ``watch`` (``name``, ``version``, ``timeout``): ``settled`` once every device runs that
  model or failed to (``active``, ``errors``, ``timeline``: each device's reported states, and
  when it read each desired, manifest and chunk from its socket, with their
  ``time.monotonic()``, one clock for every process of the machine; ``tick_lags_ms``: the lags
  while it waited);
- ``counters``: ``counters`` (``samples_generated``, ``acks_received``: totals);
- ``reset_lag``: ``lag_reset`` (the tick lag counts again from now);
- ``stop`` (``flush_timeout``): ``stopped`` (``drained``, ``tick_lags_ms``, and per device
  ``samples_generated``, ``statuses`` and ``anomaly_times``), then the process exits.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from simulator.fleet import DeviceSpec
from simulator.scale_device import ScaleDevice
from simulator.scale_fleet import UPDATE_STEPS_PER_ROUND, ScaleFleet

__all__ = ["main", "settle"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 180.0


def build(spec: dict[str, Any]) -> ScaleFleet:
    """The fleet a share's description asks for, devices added, not started."""
    auth: dict[str, dict[str, Any]] = spec.get("auth", {})
    fleet = ScaleFleet(mqtt_host=spec["host"], mqtt_port=spec["port"],
                       state_root=Path(spec["state_root"]), trust_keys=spec["trust_keys"],
                       topic_prefix=spec.get("topic_prefix", "edgeloop/v1"),
                       shards=spec.get("shards", 1), overrides=spec.get("overrides", {}),
                       update_steps_per_round=spec.get("update_steps_per_round",
                                                       UPDATE_STEPS_PER_ROUND),
                       mqtt_auth=lambda device_id: auth.get(device_id, {}))
    for device in spec["devices"]:
        fleet.add(DeviceSpec(**device))
    return fleet


def settle(fleet: ScaleFleet, name: str, version: int, timeout: float,
           poll_s: float = 0.25) -> dict[str, Any]:
    """Wait until every device runs ``name`` v``version`` or failed to; what each reported.

    Only the devices not settled yet are looked at again, four times a second: this thread
    shares the interpreter lock with the shards, and a scan of every device every 20 ms was a
    quarter of the process's CPU during a rollout (py-spy). The time each device got there is
    its own ``reported`` stamp (the timeline), not when this loop noticed."""
    def runs(device: ScaleDevice) -> bool:
        active = device.core.detector.active
        return active is not None and (active.manifest.name,
                                       active.manifest.version) == (name, version)

    def failed(device: ScaleDevice) -> bool:
        state = device.core.updater.state
        return state is not None and state.value == "failed"

    pending = list(fleet.devices.values())
    lag_mark = fleet.tick_lag_mark()

    def settled() -> bool:
        pending[:] = [d for d in pending if not (runs(d) or failed(d))]
        return not pending

    fleet.wait_until(settled, timeout, poll_s)
    devices = list(fleet.devices.values())
    return {"active": sum(runs(d) for d in devices),
            "errors": [d.core.updater.last_error for d in devices if d.core.updater.last_error],
            "timeline": {d.device_id: d.timeline for d in devices},
            "tick_lags_ms": [round(lag * 1000.0, 3) for lag in fleet.tick_lags_since(lag_mark)]}


def final_report(fleet: ScaleFleet, drained: bool, lags: list[float]) -> dict[str, Any]:
    """What the driver merges once the fleet stopped."""
    statuses = fleet.statuses()
    return {
        "drained": drained,
        "tick_lags_ms": [round(lag * 1000.0, 3) for lag in lags],
        "samples_generated": fleet.samples_generated(),
        "statuses": {d: {"anomalies_raised": s.anomalies_raised, "drops": s.drops,
                         "reconnects": s.reconnects, "readings_stored": s.readings_stored}
                     for d, s in statuses.items()},
        # (epoch, seq) keys as "epoch:seq" (JSON objects have string keys)
        "anomaly_times": {d.device_id: {f"{e}:{q}": t for (e, q), t in d.wire.anomaly_times.items()}
                          for d in fleet.devices.values() if d.wire.anomaly_times},
    }


def serve(fleet: ScaleFleet, commands: IO[str], say: Callable[..., None]) -> None:
    """Start ``fleet``, say ``connected``, follow ``commands`` until ``stop`` or their end."""
    started = time.monotonic()
    fleet.start()
    say(event="connected", devices=fleet.wait_connected(_CONNECT_TIMEOUT_S),
        seconds=round(time.monotonic() - started, 2))
    flush_timeout = 10.0
    try:
        for line in commands:
            if not line.strip():
                continue
            command = json.loads(line)
            cmd = command.get("cmd")
            if cmd == "inject":
                truths = [fleet.devices[f["device_id"]].source.inject(
                    f["kind"], at=f["at"], duration=f["duration"]) for f in command["faults"]]
                say(event="injected", truths=[t.to_dict() for t in truths])
            elif cmd == "watch":
                say(event="settled", **settle(fleet, command["name"], int(command["version"]),
                                              float(command["timeout"])))
            elif cmd == "counters":
                say(event="counters",
                    samples_generated=sum(fleet.samples_generated().values()),
                    acks_received=sum(d.core.acks_received for d in fleet.devices.values()))
            elif cmd == "reset_lag":
                fleet.reset_tick_lag()
                say(event="lag_reset")
            elif cmd == "stop":
                flush_timeout = float(command.get("flush_timeout", flush_timeout))
                break
            else:
                log.warning("fleet worker: unknown command %r", cmd)
    finally:
        lags = fleet.tick_lags()
        drained = fleet.stop(flush_timeout=flush_timeout)
        say(event="stopped", **final_report(fleet, drained, lags))


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    out = sys.stdout

    def say(**fields: Any) -> None:
        out.write(json.dumps(fields) + "\n")
        out.flush()

    serve(build(spec), sys.stdin, say)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main(sys.argv[1:]))
