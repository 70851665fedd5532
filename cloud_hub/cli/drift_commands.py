"""Drift commands: the fleet drift view, retrain policies, and retrain runs with their steps."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from cloud_hub.cli.argtypes import json_object
from cloud_hub.cli.client import HubClient
from cloud_hub.cli.render import emit, fmt
from cloud_hub.core.states import RetrainScope, TrainingSource

__all__ = ["DRIFT_COMMANDS", "add_drift_parsers", "drift_line", "run_line"]


def add_drift_parsers(sub: Any) -> None:
    d = sub.add_parser("drift", help="the fleet drift view (per device: state, since when, "
                                     "which channels, anomaly rate against its baseline)")
    d.add_argument("action", choices=["list", "show"], nargs="?", default="list")
    d.add_argument("device_id", nargs="?")
    d.add_argument("--group")
    d.add_argument("--state", choices=["warming", "stable", "drift"])
    d.add_argument("--limit", type=int, default=20, help="show: how many summaries")

    r = sub.add_parser("retrain", help="retrain policies per device group, and retrain runs "
                                       "(trigger, training, parity gate, canary, outcome)")
    r.add_argument("action", choices=["runs", "show", "start", "policies", "policy",
                                      "delete-policy"])
    r.add_argument("target", nargs="?", help="show: run id; policy/delete-policy: the group "
                                             "(default: devices whose group has none)")
    r.add_argument("--devices", help="start: comma-separated device ids")
    r.add_argument("--group", help="start: every device of this group")
    r.add_argument("--reason", help="start: why (kept with the run)")
    r.add_argument("--source", choices=[s.value for s in TrainingSource])
    r.add_argument("--state", help="runs: only runs in this state")
    r.add_argument("--hold", type=float, metavar="SECONDS", help="policy: drift held this long")
    r.add_argument("--ratio", type=float, help="policy: anomaly rate above ratio x baseline")
    r.add_argument("--scope", choices=[s.value for s in RetrainScope])
    r.add_argument("--recent", type=float, metavar="SECONDS",
                   help="policy: train on this much recent data")
    r.add_argument("--cooldown", type=float, metavar="SECONDS")
    r.add_argument("--spec", type=json_object, help="policy: TrainingSpec fields as JSON")
    r.add_argument("--rollout", type=json_object, help="policy: rollout policy as JSON")
    # Neither: a new policy is enabled, an existing one keeps its state (a change of another
    # figure used to enable a disabled policy again).
    on_off = r.add_mutually_exclusive_group()
    on_off.add_argument("--disable", dest="enabled", action="store_false", default=None,
                        help="policy: keep it, trigger nothing")
    on_off.add_argument("--enable", dest="enabled", action="store_true", default=None,
                        help="policy: trigger again (a new policy is enabled)")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def drift_line(d: dict[str, Any]) -> str:
    text = f"{d['device_id']:<20} {d['state']:<8}"
    if d["state"] == "drift":
        text += f" since {_ago(d.get('since'))} ({fmt(d.get('held_s'))} s)"
        text += f" on {', '.join(d.get('channels') or []) or '?'}"
    text += (f"  anomalies {_pct(d.get('anomaly_rate'))} of windows, baseline "
             f"{_pct(d.get('baseline_anomaly_rate'))}")
    if d.get("model"):
        text += f"  model {fmt(d['model'])}"
    return text


def run_line(r: dict[str, Any]) -> str:
    model = r["model"]
    version = f"v{model['version']}" if model.get("version") else "(new version)"
    return (f"#{r['id']:<4} {r['state']:<11} {r['trigger']:<12} {model['name']} {version}  "
            f"{len(r['devices'])} device(s), group {r['group']}  {_ago(r['created_at'])}")


def drift(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "show":
        if not a.device_id:
            raise SystemExit("drift show needs a device id")
        data = c.get(f"/drift/{a.device_id}", limit=a.limit)
        if a.json:
            emit(data, True)
            return 0
        print(drift_line(data))
        for s in data["summaries"]:
            score = s.get("score") or {}
            print(f"  {_ago(s['start'])} .. {_ago(s['end'])}  {s['state']:<8} windows "
                  f"{s['windows']}, anomalies {s['anomalies']}, score p95 {fmt(score.get('q95'))}"
                  f"{'  drifting ' + ','.join(s['drifting']) if s['drifting'] else ''}")
        return 0
    rows = c.get_all("/drift", group=a.group, state=a.state)
    if a.json:
        emit(rows, True)
    elif not rows:
        print("no drift summaries yet", file=sys.stderr)
    else:
        for row in rows:
            print(drift_line(row))
    return 0


def _policy_body(a: argparse.Namespace, current: dict[str, Any] | None) -> dict[str, Any]:
    body = {k: v for k, v in (current or {}).items() if k not in ("group", "updated_at")}
    changes = {"drift_hold_s": a.hold, "max_anomaly_rate_ratio": a.ratio, "scope": a.scope,
               "source": a.source, "recent_s": a.recent, "cooldown_s": a.cooldown}
    body.update({k: v for k, v in changes.items() if v is not None})
    if a.spec is not None:
        body["spec"] = a.spec
    if a.rollout is not None:
        body["rollout"] = {**(body.get("rollout") or {}), **a.rollout}
    if not body.get("spec"):
        body.pop("spec", None)
    if a.enabled is not None:
        body["enabled"] = a.enabled
    body.setdefault("enabled", True)
    return body


def retrain(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "policies":
        emit(c.get_all("/retrain-policies"), a.json, columns=(
            "group", "enabled", "drift_hold_s", "max_anomaly_rate_ratio", "scope", "source",
            "recent_s", "cooldown_s"))
        return 0
    if a.action in ("policy", "delete-policy"):
        group = a.target or "default"
        if a.action == "delete-policy":
            c.delete(f"/retrain-policies/{group}")
            print(f"retrain policy of {group} deleted")
            return 0
        current = next((p for p in c.get_all("/retrain-policies") if p["group"] == group),
                       None)
        emit(c.put(f"/retrain-policies/{group}", _policy_body(a, current)), a.json)
        return 0
    if a.action == "start":
        if not a.reason:
            raise SystemExit("retrain start needs --reason")
        body: dict[str, Any] = {"reason": a.reason, "source": a.source}
        if a.devices:
            body["devices"] = a.devices.split(",")
        else:
            body["group"] = a.group
        data = c.post("/retrain-runs", body)
        emit(data, True) if a.json else print(run_line(data))
        return 0
    if a.action == "show":
        if not a.target:
            raise SystemExit("retrain show needs the run id")
        if not a.target.isdigit():
            raise SystemExit(f"error: retrain show needs the run id, a number, not "
                             f"{a.target!r} (see retrain runs)")
        data = c.get(f"/retrain-runs/{a.target}")
        if a.json:
            emit(data, True)
            return 0
        print(run_line(data))
        print(f"  devices: {', '.join(data['devices'])}")
        for step in data["steps"]:
            print(f"  {_ago(step['at'])}  {step['step']:<11} {step['reason']}")
        return 0
    rows = c.get_all("/retrain-runs", state=a.state)
    if a.json:
        emit(rows, True)
    elif not rows:
        print("no retrain runs", file=sys.stderr)
    else:
        for row in rows:
            print(run_line(row))
            if row["steps"]:
                last = row["steps"][-1]
                print(f"       {last['step']}: {last['reason']}")
    return 0


DRIFT_COMMANDS = {"drift": drift, "retrain": retrain}
