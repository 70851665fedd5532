"""``edge-agent``: run the agent, check a config and model store, show local status.

    edge-agent run --config /etc/edgeloop/agent.toml
    edge-agent check --config agent.toml     # config, trusted keys, source, model store
    edge-agent status --config agent.toml    # local state, no network needed
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, ConfigError, load_config

__all__ = ["main"]


def _check(config: AgentConfig) -> list[tuple[bool, str]]:
    from edge_agent.inference.runtime import available_runtime
    from edge_agent.models.loader import load_model
    from edge_agent.models.store import ModelStore
    from edge_agent.sources.base import SourceError
    from edge_agent.sources.registry import available_sources, create_source
    from shared.keys import public_key_bytes

    results: list[tuple[bool, str]] = [(True, f"config: device {config.device_id}, broker "
                                              f"{config.mqtt.host}:{config.mqtt.port}")]
    keys = {k: public_key_bytes(v) for k, v in config.trust.keys.items()}
    results.append((bool(keys), f"trust: {len(keys)} pinned key(s) {sorted(keys)}" if keys else
                    "trust: no pinned keys; every model will be refused"))
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
    store = ModelStore(models, keys)
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
    if outbox.exists():
        snap = Outbox.inspect(outbox)
        out["outbox"] = {
            "depth": snap.depth, "bytes": snap.bytes,
            "oldest_unsent_age_s": None if snap.oldest_created_at is None
            else round(time.time() - snap.oldest_created_at, 1),
            "drops": snap.drops.messages, "dropped_readings": snap.drops.telemetry_readings,
            "dropped_anomalies": snap.drops.anomalies, "next_seq": snap.next_seq,
            "kept_for_resend": snap.kept,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="The edgeloop edge agent: anomaly detection next to the sensors.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the agent until SIGTERM"),
                       ("check", "validate the config, trusted keys, source and model store"),
                       ("status", "show the local state without the network")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, type=Path, help="agent TOML file")
        if name != "run":
            p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    if args.command == "run":
        from edge_agent.daemon.runner import run

        return run(args.config)
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
        print(f"last error    {_last_error(agent)}")
        if agent.get("session_conflict"):
            print(f"WARNING       {agent['session_conflict']} "
                  f"({agent.get('session_takeovers', 0)} take-overs)")
        if agent:
            print(f"last update   {status.get('status_age_s')}s ago, connected "
                  f"{agent.get('connected')}, readings {agent.get('readings')}, "
                  f"anomalies {agent.get('anomalies_raised')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
