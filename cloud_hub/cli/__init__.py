"""``cloud-hub``: ``serve`` runs the hub; every other command is a client of its REST API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cloud_hub.cli.client import ApiError, HubClient
from cloud_hub.cli.device_commands import add_device_parsers
from cloud_hub.cli.drift_commands import add_drift_parsers
from cloud_hub.cli.key_commands import add_key_parsers
from cloud_hub.cli.local_commands import LOCAL, add_local_parsers, run_local
from cloud_hub.cli.model_commands import add_model_parsers
from cloud_hub.cli.ops_commands import add_ops_parsers
from cloud_hub.cli.rollout_commands import add_rollout_parsers
from cloud_hub.cli.training_commands import add_training_parsers

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

    add_training_parsers(sub)  # train, jobs
    add_model_parsers(sub)  # models
    add_rollout_parsers(sub)  # rollout
    add_device_parsers(sub)  # devices
    add_local_parsers(sub)  # broker init|run
    add_ops_parsers(sub)  # anomalies, incidents, webhooks
    add_drift_parsers(sub)  # drift, retrain
    add_key_parsers(sub)  # keys, api-keys
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
