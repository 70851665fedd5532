"""``edge-agent``: run the agent, check a config and model store, show local status.

    edge-agent run --config /etc/edgeloop/agent.toml
    edge-agent check --config agent.toml     # config, trusted keys, source, model store
    edge-agent status --config agent.toml    # local state, no network needed
    edge-agent init --hub http://hub:8080 --device pump-001 --csv data.csv   # write agent.toml
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the config pulls in numpy, and `run` must first
    from edge_agent.config import AgentConfig  # cap numpy's BLAS threads (daemon/memory.py)

__all__ = ["main"]


def _check(config: AgentConfig) -> list[tuple[bool, str]]:
    from edge_agent.inference.runtime import available_runtime
    from edge_agent.models.loader import load_model
    from edge_agent.models.store import ModelStore
    from edge_agent.sources.base import SourceError
    from edge_agent.sources.registry import available_sources, create_source
    from edge_agent.trust.keyring import open_keyring
    from shared.keys import fingerprint_of_raw, public_key_bytes

    results: list[tuple[bool, str]] = [(True, f"config: device {config.device_id}, broker "
                                              f"{config.mqtt.host}:{config.mqtt.port}")]
    pinned = sorted(config.trust.keys)
    results.append((bool(pinned), f"trust: {len(pinned)} pinned key(s) {pinned}" if pinned else
                    "trust: no pinned keys; every model will be refused"))
    ring = open_keyring(config.trust.keys, Path(config.state_dir), read_only=True)
    if ring.version:
        results.append((True, f"trust: signed trust list v{ring.version} applied, keys "
                              f"{sorted(ring.trusted())}"))
    # Compare these with `cloud-hub keys fingerprint` on the hub, over another channel.
    results += [(True, f"trust: key {k} fingerprint {fingerprint_of_raw(public_key_bytes(v))}")
                for k, v in sorted(config.trust.keys.items())]
    channels: list[str] | None = None
    if config.source.type not in available_sources():
        results.append((False, f"source: type {config.source.type!r} unknown; available: "
                               f"{available_sources()}"))
    elif config.source.type == "csv":
        try:
            source = create_source("csv", config.source.options)
            channels = source.channels
            source.close()
            results.append((True, f"source: csv with channels {channels}"))
        except SourceError as exc:
            results.append((False, f"source: {exc}"))
    else:
        results.append((True, f"source: {config.source.type} (not opened by check)"))
    try:
        results.append((True, f"runtime: {available_runtime()}"))
    except Exception as exc:
        results.append((False, f"runtime: {exc}"))
    models = Path(config.state_dir) / "models"
    if not models.is_dir():
        results.append((True, f"model store: {models} does not exist yet (no model)"))
        return results
    store = ModelStore(models, ring)
    for which, pointer in (("current", store.current()), ("previous", store.previous())):
        if pointer is None:
            results.append((True, f"model store: no {which} model"))
            continue
        try:
            manifest, data = store.read_verified(pointer.name, pointer.version)
            load_model(manifest, data, channels=channels or list(manifest.input.channels))
            results.append((True, f"model store: {which} {pointer.label} verified and loads"))
        except Exception as exc:
            results.append((False, f"model store: {which} {pointer.label}: {exc}"))
    return results


def _status(config: AgentConfig) -> dict[str, Any]:
    from edge_agent.agent import STATUS_FILE
    from edge_agent.models.store import ModelStore
    from edge_agent.telemetry.outbox import Outbox

    state = Path(config.state_dir)
    out: dict[str, Any] = {"device_id": config.device_id, "state_dir": str(state)}
    try:
        saved = json.loads((state / STATUS_FILE).read_text())
        out["agent"] = saved
        out["status_age_s"] = round(time.time() - float(saved.get("updated_at", 0)), 1)
    except (OSError, ValueError):
        out["agent"] = None
    outbox = state / "outbox.db"
    try:
        snap = Outbox.inspect(outbox) if outbox.exists() else None
    except sqlite3.Error as exc:  # an agent starting right now has not made its tables yet
        out["outbox"] = {"unreadable": str(exc)}
        snap = None
    if snap is not None:
        out["outbox"] = {
            "depth": snap.depth, "bytes": snap.bytes,
            "oldest_unsent_age_s": None if snap.oldest_created_at is None
            else round(time.time() - snap.oldest_created_at, 1),
            "drops": snap.drops.messages, "dropped_readings": snap.drops.telemetry_readings,
            "dropped_anomalies": snap.drops.anomalies, "next_seq": snap.next_seq,
            "awaiting_hub_ack": snap.delivered, "epoch": snap.epoch,
        }
    store = ModelStore(state / "models", {}) if (state / "models").is_dir() else None
    pointers = (("current_model", store.current() if store else None),
                ("previous_model", store.previous() if store else None))
    for which, pointer in pointers:
        out[which] = None if pointer is None else {"name": pointer.name,
                                                   "version": pointer.version,
                                                   "sha256": pointer.sha256}
    return out


def _last_error(agent: dict[str, Any]) -> str:
    from shared.timefmt import iso_time

    text, at = agent.get("last_error"), agent.get("last_error_at")
    if not text:
        return "-"
    if not isinstance(at, int | float):
        return str(text)
    return f"{iso_time(at)} ({round(time.time() - at)}s ago): {text}"


def _init(args: argparse.Namespace) -> int:
    from edge_agent.config import ConfigError
    from edge_agent.init_config import InitError, InitOptions, write_config

    options = InitOptions(
        hub_url=args.hub, device_id=args.device, output=args.output, mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port, topic_prefix=args.topic_prefix, state_dir=args.state_dir,
        csv=args.csv, channels=args.channels.split(",") if args.channels else None,
        force=args.force, api_key=args.api_key)
    try:
        path = write_config(options)
    except (InitError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    how = "enrolled: its broker credential and" if args.api_key else "with"
    print(f"wrote {path} for device {args.device} ({how} the hub's signing key pinned); "
          f"next: edge-agent check --config {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="The edgeloop edge agent: anomaly detection next to the sensors.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="write a working agent.toml for this device from the hub")
    i.add_argument("--hub", required=True, help="the hub's URL, e.g. http://hub:8080")
    i.add_argument("--device", required=True, help="this device's id")
    i.add_argument("--output", "-o", type=Path, default=Path("agent.toml"),
                   help="where to write it (default ./agent.toml)")
    i.add_argument("--csv", help="source: replay this CSV file (SKAB format too)")
    i.add_argument("--channels", help="source: JSON lines on stdin with these channels (a,b)")
    i.add_argument("--mqtt-host", help="the broker (default: the hub URL's host)")
    i.add_argument("--mqtt-port", type=int, default=1883)
    i.add_argument("--topic-prefix", default="edgeloop/v1")
    i.add_argument("--state-dir", help="default: <output name>-state beside the file")
    i.add_argument("--force", action="store_true", help="replace an existing file")
    i.add_argument("--api-key", default=os.environ.get("EDGELOOP_API_KEY"),
                   help="an admin API key (env EDGELOOP_API_KEY): enroll the device (its own "
                        "broker credential and CA); without: only pin the hub's signing key")
    for name, text in (("run", "run the agent until SIGTERM"),
                       ("check", "validate the config, trusted keys, source and model store"),
                       ("status", "show the local state without the network")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, type=Path, help="agent TOML file")
        if name != "run":
            p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    if args.command == "run":
        from edge_agent.daemon.memory import limit_native_threads

        limit_native_threads()  # before anything imports numpy
        from edge_agent.daemon.runner import run

        return run(args.config)
    if args.command == "init":
        return _init(args)
    from edge_agent.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        results = _check(config)
        if args.json:
            print(json.dumps([{"ok": ok, "check": text} for ok, text in results], indent=2))
        else:
            for ok, text in results:
                print(f"{'ok  ' if ok else 'FAIL'} {text}")
        return 0 if all(ok for ok, _ in results) else 1
    status = _status(config)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        agent = status.get("agent") or {}
        outbox = status.get("outbox") or {}
        current = status.get("current_model")
        print(f"device        {status['device_id']}  (state in {status['state_dir']})")
        model = f"{current['name']} v{current['version']}" if current else "-"
        print(f"model         {model}  state {agent.get('model_state') or '-'}")
        print(f"outbox        depth {outbox.get('depth', 0)}, {outbox.get('bytes', 0)} bytes, "
              f"oldest {outbox.get('oldest_unsent_age_s') or 0}s, drops {outbox.get('drops', 0)} "
              f"({outbox.get('dropped_readings', 0)} readings, "
              f"{outbox.get('dropped_anomalies', 0)} anomalies)")
        print(f"              {outbox.get('awaiting_hub_ack', 0)} taken by the broker, waiting "
              f"for the hub's acknowledgement (epoch {outbox.get('epoch') or '-'})")
        hub = agent.get("hub") or {}
        if hub.get("warning"):
            print(f"hub           WARNING: {hub['warning']}: check mqtt.topic_prefix")
        elif agent:
            print(f"hub           online: {', '.join(hub.get('hubs_online') or []) or 'none'}")
        drift = agent.get("drift")
        if drift:
            print(f"drift         {_drift_line(drift)}")
        print(f"last error    {_last_error(agent)}")
        if agent.get("session_conflict"):
            print(f"WARNING       {agent['session_conflict']} "
                  f"({agent.get('session_takeovers', 0)} take-overs)")
        if agent:
            print(f"last update   {status.get('status_age_s')}s ago, connected "
                  f"{agent.get('connected')}, readings {agent.get('readings')}, "
                  f"anomalies {agent.get('anomalies_raised')}")
    return 0


def _drift_line(drift: dict[str, Any]) -> str:
    """``drift  drift since 12:04:05 on flow, score; anomaly rate 4.1 % (baseline 0.2 %)``."""
    text = str(drift.get("state"))
    if drift.get("since") is not None:
        text += f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(drift['since']))}"
    if drift.get("channels"):
        text += f" on {', '.join(drift['channels'])}"
    rate, base = drift.get("anomaly_rate"), drift.get("baseline_anomaly_rate")
    if rate is not None:
        text += f"; anomaly rate {100 * rate:.1f} %"
        if base is not None:
            text += f" (baseline {100 * base:.1f} %)"
    return text


if __name__ == "__main__":
    sys.exit(main())
