"""``cloud-hub``: ``serve`` runs the hub; every other command is a client of its REST API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cloud_hub.cli.argtypes import json_object, model_ref
from cloud_hub.cli.client import ApiError, HubClient
from cloud_hub.cli.drift_commands import add_drift_parsers
from cloud_hub.cli.local_commands import LOCAL, add_local_parsers, run_local
from cloud_hub.cli.ops_commands import add_ops_parsers
from cloud_hub.cli.timearg import WHEN_HELP, parse_when
from cloud_hub.core.states import ModelStatus

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """``serve --help`` lists every setting; built only when shown (it needs pydantic)."""

    def format_help(self) -> str:
        if self.prog.split()[-1] == "serve":
            from cloud_hub.core.settings_doc import help_text

            self.epilog = help_text()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cloud-hub", description=__doc__)
    p.add_argument("--url", default=os.environ.get("EDGELOOP_HUB_URL", "http://127.0.0.1:8080"),
                   help="hub base URL (env EDGELOOP_HUB_URL)")
    p.add_argument("--api-key", default=os.environ.get("EDGELOOP_API_KEY"),
                   help="API key (env EDGELOOP_API_KEY)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the hub: REST API + MQTT ingest (settings: EDGELOOP_*)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run the hub: REST API + MQTT ingest. Settings come from "
                                   "EDGELOOP_* environment variables.")
    s.add_argument("--log-level", default="INFO")

    db = sub.add_parser("db", help="the hub's database schema (settings: EDGELOOP_*, like serve)")
    db.add_argument("action", choices=["upgrade", "current", "copy", "revision"],
                    help="upgrade: to this hub's schema (serve does it at start-up); current: "
                         "the revision it is at; copy: every row of the database --from into "
                         "this hub's, which must be empty (e.g. SQLite to PostgreSQL; stop the "
                         "hubs first); revision: a new migration (developers)")
    db.add_argument("--from", dest="source", metavar="URL",
                    help="copy: the database to copy from, a SQLAlchemy URL or a SQLite file")
    db.add_argument("-m", "--message", help="revision: what the new migration changes")

    t = sub.add_parser("train", help="start a training job and follow its progress")
    t.add_argument("name", help="model name")
    t.add_argument("--devices", help="comma-separated device ids (default: all)")
    t.add_argument("--channels", help="comma-separated channels (default: all)")
    t.add_argument("--since", type=parse_when, help=f"readings from: {WHEN_HELP}")
    t.add_argument("--until", type=parse_when, help="readings until (same forms)")
    t.add_argument("--family", choices=["dense_ae", "conv1d_ae", "pca"])
    t.add_argument("--window", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--quantization", choices=["int8", "float16", "dynamic", "float32", "auto"])
    t.add_argument("--spec", type=json_object, help="more TrainingSpec fields as JSON")
    t.add_argument("--csv", metavar="FILE", help="train on this CSV instead of stored telemetry")
    t.add_argument("--no-wait", action="store_true", help="return once the job is queued")

    j = sub.add_parser("jobs", help="list training jobs, show one, or cancel one")
    j.add_argument("id", nargs="?", type=int)
    j.add_argument("--cancel", type=int, metavar="ID")

    m = sub.add_parser("models", help="the model registry")
    m.add_argument("action", choices=["list", "show", "compare", "publish", "retire", "download",
                                      "rollback"])
    m.add_argument("refs", nargs="*", type=model_ref, metavar="NAME:VERSION")
    m.add_argument("--name")
    m.add_argument("--status", choices=[s.value for s in ModelStatus])
    m.add_argument("--output", "-o")
    m.add_argument("--devices", help="rollback: comma-separated device ids (default: every "
                                     "device on another version of that model)")

    r = sub.add_parser("rollout", help="staged rollouts")
    r.add_argument("action", choices=["create", "status", "pause", "resume", "abort",
                                      "rollback"])
    r.add_argument("id", nargs="?", type=int)
    r.add_argument("--model", type=model_ref, help="NAME:VERSION to roll out")
    r.add_argument("--devices")
    r.add_argument("--group")
    r.add_argument("--tags")
    r.add_argument("--percent", type=int, default=100)
    r.add_argument("--policy", type=json_object,
                   help='JSON, e.g. {"canary_size": 2, "wave_size": 20}')
    r.add_argument("--wait", action="store_true",
                   help="create: follow it to the end with a progress bar (exit 1 unless it "
                        "succeeds)")

    d = sub.add_parser("devices", help="devices: list, show, tag, set desired")
    d.add_argument("action", choices=["list", "show", "tag", "desired", "enroll", "revoke"])
    d.add_argument("device_id", nargs="?")
    d.add_argument("--group")
    d.add_argument("--tag", help="filter the list by tag")
    d.add_argument("--tags", help="tag: the device's new comma-separated tags")
    d.add_argument("--model", type=model_ref, help="desired: NAME:VERSION")
    d.add_argument("--out", help="enroll: write agent.toml and ca.crt into this folder "
                                 "(default: ./DEVICE_ID)")
    d.add_argument("--state-dir", help="enroll: the agent's state_dir (default /var/lib/edgeloop)")
    d.add_argument("--mqtt-host", help="enroll: the broker's name as the device reaches it")
    d.add_argument("--mqtt-port", type=int)
    d.add_argument("--from", dest="ids_file", metavar="FILE",
                   help="enroll: many devices, one id per line ('-': stdin), as a job with a "
                        "progress bar; each bundle goes into OUT/DEVICE_ID (--out, default .)")
    add_local_parsers(sub)  # broker init|run

    add_ops_parsers(sub)  # anomalies, incidents, webhooks
    add_drift_parsers(sub)  # drift, retrain

    sk = sub.add_parser("keys", help="signing keys: list, rotate to a new key, retire an old one; "
                                     "fingerprint: read on this machine, for checking devices")
    sk.add_argument("action", choices=["list", "rotate", "retire", "fingerprint"])
    sk.add_argument("key_id", nargs="?", help="retire: the key id")
    sk.add_argument("--overlap", type=float, default=7 * 86400.0, metavar="SECONDS",
                    help="rotate: how long the old key stays trusted (default 7 days)")
    sk.add_argument("--force", action="store_true",
                    help="retire: even during the overlap (a compromised key)")

    k = sub.add_parser("api-keys", help="create, list and revoke API keys")
    k.add_argument("action", choices=["list", "create", "revoke"])
    k.add_argument("--name")
    k.add_argument("--scope", choices=["read", "admin"], default="read")
    k.add_argument("--id", type=int)
    _accept_common_options_after(sub)
    return p


def _accept_common_options_after(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``cloud-hub devices list --json --api-key K`` as well as before the command: given
    after it, they win; not given, the values before it (or the environment) stay."""
    for name, command in sub.choices.items():
        if name == "serve":
            continue
        taken = command._option_string_actions  # e.g. webhooks has its own --url
        if "--url" not in taken:
            command.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if "--api-key" not in taken:
            command.add_argument("--api-key", default=argparse.SUPPRESS,
                                 help="API key (env EDGELOOP_API_KEY)")
        if "--json" not in taken:
            command.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                 help="machine-readable JSON output")


def _check(a: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    need_id = {("rollout", "pause"), ("rollout", "resume"), ("rollout", "abort"),
               ("rollout", "rollback")}
    action = getattr(a, "action", None)
    if (a.command, action) in need_id and a.id is None:
        parser.error(f"rollout {action} needs the rollout id")
    if a.command == "rollout" and action == "create" and not a.model:
        parser.error("rollout create needs --model NAME:VERSION")
    if a.command == "models" and action in ("show", "publish", "retire", "download",
                                            "rollback") and not a.refs:
        parser.error(f"models {action} needs NAME:VERSION")
    if a.command == "devices" and action != "list" and not a.device_id and not (
            action == "enroll" and a.ids_file):
        parser.error(f"devices {action} needs a device id")
    if a.command == "devices" and action == "desired" and not a.model:
        parser.error("devices desired needs --model NAME:VERSION")
    if a.command == "devices" and action == "tag" and a.tags is None and a.group is None:
        parser.error("devices tag needs --tags or --group (--tags '' clears the tags, "
                     "--group '' the group)")
    if a.command == "keys" and action == "retire" and not a.key_id:
        parser.error("keys retire needs the key id (see keys list)")
    if a.command == "api-keys" and action == "create" and not a.name:
        parser.error("api-keys create needs --name")
    if a.command == "api-keys" and action == "revoke" and a.id is None:
        parser.error("api-keys revoke needs --id")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    if args.command in LOCAL or (args.command, getattr(args, "action", None)) == (
            "keys", "fingerprint"):
        return run_local(args)
    if args.command == "serve":
        from pydantic import ValidationError

        from cloud_hub.cli.serve import run_serve
        from cloud_hub.core.config import Settings
        from cloud_hub.core.settings_doc import setting_errors

        try:
            settings = Settings()
        except ValidationError as exc:
            for line in setting_errors(exc):
                print(f"error: {line}", file=sys.stderr)
            return 2
        logging.basicConfig(level=args.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return run_serve(settings, args.log_level)
    if args.command == "db":
        from cloud_hub.cli.db import run_db

        return run_db(args)
    from cloud_hub.cli.commands import COMMANDS

    client = HubClient(args.url, args.api_key)
    try:
        return COMMANDS[args.command](args, client)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
