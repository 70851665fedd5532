"""Operations commands: anomalies tail (events or incidents), incidents, webhooks, hubs.

``anomalies tail`` prints one line per item, oldest first so the newest is at the bottom, and
with ``--follow`` one more line per new item; with ``--json`` each line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from cloud_hub.cli.argtypes import positive_float
from cloud_hub.cli.client import HubClient
from cloud_hub.cli.render import emit
from cloud_hub.cli.timearg import WHEN_HELP, parse_when
from cloud_hub.core.states import DeliveryStatus, IncidentState

__all__ = ["OPS_COMMANDS", "add_ops_parsers", "event_line", "incident_line"]


def add_ops_parsers(sub: Any) -> None:
    a = sub.add_parser("anomalies", help="recent anomaly events or incidents, one line each "
                                         "(tail -f with --follow)")
    a.add_argument("action", choices=["tail"], nargs="?", default="tail")
    a.add_argument("--incidents", action="store_true",
                   help="one line per incident instead of per event")
    a.add_argument("--device")
    a.add_argument("--since", type=parse_when,
                   help=f"events stored at or after this: {WHEN_HELP}")
    a.add_argument("--limit", type=int, default=50, help="how many recent items to print first")
    a.add_argument("--follow", "-f", action="store_true", help="then print each new item")
    a.add_argument("--interval", type=positive_float, default=2.0,
                   help="seconds between polls")
    a.add_argument("--for", dest="duration", type=positive_float, metavar="SECONDS",
                   help="with --follow: stop after this long")

    i = sub.add_parser("incidents", help="incidents: list, show, acknowledge, resolve")
    i.add_argument("action", choices=["list", "show", "ack", "resolve"], nargs="?",
                   default="list")
    i.add_argument("id", nargs="?", type=int)
    i.add_argument("--state", choices=[*(s.value for s in IncidentState), "active"])
    i.add_argument("--device")
    i.add_argument("--limit", type=int, default=50)
    i.add_argument("--note", help="ack/resolve: a note kept with the incident")

    sub.add_parser("hubs", help="the hub processes on the database: state, leases, rates")

    w = sub.add_parser("webhooks", help="incident notification rules and their deliveries")
    w.add_argument("action", choices=["list", "create", "delete", "enable", "disable",
                                      "deliveries"])
    w.add_argument("id", nargs="?", type=int)
    w.add_argument("--name")
    # Not --url: that is the hub's address, before or after the command, and a second
    # --url here took its place (every webhooks command went to no hub at all).
    w.add_argument("--endpoint", metavar="URL",
                   help="create: the https URL the rule's deliveries are POSTed to")
    w.add_argument("--group")
    w.add_argument("--tag")
    w.add_argument("--min-score", type=float)
    w.add_argument("--fault-class")
    w.add_argument("--status", choices=[s.value for s in DeliveryStatus])
    w.add_argument("--limit", type=int, default=50)


def _time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _score(score: float, threshold: float) -> str:
    ratio = f" ({score / threshold:.1f}x)" if threshold > 0 else ""
    return f"score {score:.4g} / threshold {threshold:.4g}{ratio}"


def event_line(e: dict[str, Any]) -> str:
    channels = ",".join(e.get("channels") or []) or "-"
    model = e.get("model") or {"name": e.get("model_name"), "version": e.get("model_version")}
    extra = ""
    if e.get("fault_class"):
        extra += f"  fault {e['fault_class']}"
    return (f"{_time(e['ts_start'])}  {e['device_id']}  seq {e['seq']}  "
            f"{_score(e['score'], e['threshold'])}  model {model['name']}:{model['version']}  "
            f"channels {channels}{extra}")


def incident_line(i: dict[str, Any]) -> str:
    duration = max(0.0, i["ended_at"] - i["started_at"])
    channels = ",".join(i.get("channels") or []) or "-"
    who = ""
    if i["state"] == IncidentState.ACKNOWLEDGED:
        who = f" by {i['acknowledged_by']}"
    elif i["state"] == IncidentState.RESOLVED:
        who = f" by {i['resolved_by']}"
    extra = f"  fault {i['fault_class']}" if i.get("fault_class") else ""
    return (f"#{i['id']}  {i['state']}{who}  {i['device_id']}  {_time(i['started_at'])} "
            f"for {duration:.0f} s  {i['events']} event(s)  peak "
            f"{_score(i['peak_score'], i['threshold'])}  channels {channels}{extra}")


def _print_items(items: list[dict[str, Any]], as_json: bool,
                 line: Callable[[dict[str, Any]], str]) -> None:
    for item in items:
        print(json.dumps(item, default=str) if as_json else line(item), flush=True)


def _recent_incidents(a: argparse.Namespace, c: HubClient, after_id: int) -> list[Any]:
    rows: list[dict[str, Any]] = c.get("/incidents", device_id=a.device, limit=a.limit)
    return sorted((r for r in rows if r["id"] > after_id), key=lambda r: r["id"])


def anomalies(a: argparse.Namespace, c: HubClient) -> int:
    """Print recent items, then (with --follow) each new one as it arrives."""
    what = "incidents" if a.incidents else "anomaly events"
    deadline = time.monotonic() + a.duration if a.duration else None
    last_id, since, first = 0, a.since, True
    while True:
        if a.incidents:
            items = _recent_incidents(a, c, last_id)
            if items:
                last_id = items[-1]["id"]
            _print_items(items, a.json, incident_line)
        else:
            if first and since is None:  # the latest `limit` events, oldest of them first
                items = list(reversed(c.get("/anomalies", device_id=a.device, limit=a.limit,
                                            order="newest")))
            else:
                items = c.get("/anomalies", device_id=a.device, since=since,
                              limit=a.limit if first else 10_000)
            if items:
                since = max(r["stored_at"] for r in items) + 1e-6
            _print_items(items, a.json, event_line)
        if first and not items:
            waiting = "; waiting for new ones (Ctrl-C to stop)" if a.follow else ""
            print(f"no {what} yet{waiting}", file=sys.stderr, flush=True)
        first = False
        if not a.follow or (deadline is not None and time.monotonic() >= deadline):
            return 0
        time.sleep(a.interval)  # polling an HTTP API: the interval is the point


def incidents(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "list":
        rows = c.get("/incidents", state=a.state, device_id=a.device, limit=a.limit)
        if a.json:
            emit(rows, True)
        elif not rows:
            print("no incidents", file=sys.stderr)
        else:
            _print_items(rows, False, incident_line)
        return 0
    if a.id is None:
        raise SystemExit(f"incidents {a.action} needs the incident id")
    if a.action == "show":
        data = c.get(f"/incidents/{a.id}")
        if a.json:
            emit(data, True)
        else:
            print(incident_line(data))
            for key in ("acknowledged_by", "ack_note", "resolved_by", "resolve_note"):
                if data.get(key):
                    print(f"  {key}: {data[key]}")
            _print_items(data["event_list"], False, lambda e: "  " + event_line(e))
        return 0
    path = "acknowledge" if a.action == "ack" else "resolve"
    data = c.post(f"/incidents/{a.id}/{path}", {"note": a.note})
    emit(data, True) if a.json else print(incident_line(data))
    return 0


_RULE_COLS = ("id", "name", "url", "group", "tag", "min_score", "fault_class", "enabled",
              "deliveries")
_DELIVERY_COLS = ("id", "rule_id", "incident_id", "event", "status", "attempts",
                  "last_status_code", "last_error", "delivered_at")


def webhooks(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "list":
        emit(c.get_all("/webhooks"), a.json, _RULE_COLS, "webhook rules")
    elif a.action == "create":
        if not a.name or not a.endpoint:
            raise SystemExit("webhooks create needs --name and --endpoint")
        body = {"name": a.name, "url": a.endpoint, "group": a.group, "tag": a.tag,
                "min_score": a.min_score, "fault_class": a.fault_class}
        emit(c.post("/webhooks", body), a.json, title="webhook rule (the secret is shown once)")
    elif a.action == "deliveries":
        emit(c.get("/webhooks/deliveries", status=a.status, rule_id=a.id, limit=a.limit),
             a.json, _DELIVERY_COLS, "deliveries")
    else:
        if a.id is None:
            raise SystemExit(f"webhooks {a.action} needs the rule id")
        if a.action == "delete":
            c.delete(f"/webhooks/{a.id}")
            print(f"deleted webhook rule {a.id}")
        else:
            emit(c.patch(f"/webhooks/{a.id}", {"enabled": a.action == "enable"}), a.json,
                 title=f"webhook rule {a.id}")
    return 0


def _hub_row(h: dict[str, Any]) -> dict[str, Any]:
    f = h["figures"]
    return {"client_id": h["client_id"], "host": h["host"], "pid": h["pid"],
            "state": h["state"], "seen_at": h["seen_at"],
            "msg/s": f.get("messages_per_s"), "readings/s": f.get("readings_per_s"),
            "inbox": f.get("queue_depth"), "behind": bool(f.get("ingest_behind")),
            "cpu": f.get("cpu_cores"),
            "rss MB": None if f.get("rss_bytes") is None else round(f["rss_bytes"] / 2**20),
            "leases": ", ".join(h["leases"]) or "-"}


def _broker_line(found: list[dict[str, Any]]) -> str | None:
    """The broker's figures as the running process that reported last heard them."""
    from cloud_hub.metrics.processes import broker_figures_heard

    for h in sorted(found, key=lambda h: h["seen_at"], reverse=True):
        f = broker_figures_heard(h["state"], h["seen_at"], h["figures"])
        if f is not None:
            return (f"broker: {int(f.get('clients_connected', 0)):,} clients connected, "
                    f"{int(f.get('store_messages', 0)):,} messages held, "
                    f"{int(f.get('publish_dropped', 0)):,} dropped since it started "
                    f"(as {h['client_id']} last heard it)")
    return None


def hubs(a: argparse.Namespace, c: HubClient) -> int:
    found = c.get_all("/hubs")
    emit(found if a.json else [_hub_row(h) for h in found], a.json, title="hub processes")
    line = None if a.json else _broker_line(found)
    if line is not None:
        print(line)
    return 0


OPS_COMMANDS = {"anomalies": anomalies, "incidents": incidents, "webhooks": webhooks,
                "hubs": hubs}
