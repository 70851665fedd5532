"""Commands that work on this machine's files, not through the REST API: setting up the secure
broker (``broker init`` / ``broker run``), bringing the hub's roles on a running broker up to
this version (``broker sync-roles``), checking its device credentials against the registry
(``broker audit``) and showing the signing keys' fingerprints
(``keys fingerprint``)."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud_hub.identity.dynsec import DynsecClient

__all__ = ["add_local_parsers", "run_local"]

LOCAL = ("broker",)  # and `keys fingerprint`


def add_local_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    b = sub.add_parser("broker", help="set up and run a secure mosquitto for this hub",
                       description="init: write the CA, the broker's TLS certificate, the "
                       "dynamic-security identities (broker admin + this hub) and a "
                       "mosquitto.conf into DATA_DIR/broker; run: start mosquitto on them; "
                       "sync-roles: give the hub's roles on the running broker what this "
                       "version needs and they lack (after an upgrade; removes nothing); "
                       "audit: delete the device credentials the registry says should not "
                       "exist (revoked devices', failed enrollments') and name the enrolled "
                       "devices that have none (exit 1 while any is left).")
    b.add_argument("action", choices=["init", "run", "sync-roles", "audit"])
    b.add_argument("--dry-run", action="store_true",
                   help="audit: say what would be deleted, delete nothing")
    b.add_argument("--dir", type=Path, help="where (default: EDGELOOP_DATA_DIR/broker)")
    b.add_argument("--port", type=int, default=8883)
    b.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                   help="a name or address devices use for the broker (repeatable; "
                        "default: 127.0.0.1 and localhost)")
    b.add_argument("--bind", help="listen on this address only (default: every address)")
    b.add_argument("--ca-cert", type=Path, help="the operator's CA certificate (PEM)")
    b.add_argument("--ca-key", type=Path, help="... and its key, to sign the server certificate")
    b.add_argument("--server-cert", type=Path, help="the operator's own server certificate")
    b.add_argument("--server-key", type=Path)
    b.add_argument("--force", action="store_true", help="replace an existing set-up")


def run_local(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cloud_hub.core.config import Settings
    from cloud_hub.core.settings_doc import setting_errors

    try:
        settings = Settings()
    except ValidationError as exc:
        for line in setting_errors(exc):
            print(f"error: {line}", file=sys.stderr)
        return 2
    if args.command == "keys":  # keys fingerprint
        return _fingerprint(settings)
    return _broker(args, settings)


def _fingerprint(settings: object) -> int:
    """Every signing key the hub trusts, read from its own database (no network)."""
    from sqlmodel import Session, col, select

    from cloud_hub.cli.db import missing_sqlite_file, no_database
    from cloud_hub.core.config import Settings
    from cloud_hub.db.engine import make_engine
    from cloud_hub.db.key_tables import SigningKeyRecord
    from shared.keys import fingerprint_of_raw, public_key_bytes

    assert isinstance(settings, Settings)
    if missing := missing_sqlite_file(settings.resolved_database_url):
        print(no_database(missing), file=sys.stderr)
        return 2
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            records = session.exec(select(SigningKeyRecord).where(
                col(SigningKeyRecord.status) != "retired").order_by(
                col(SigningKeyRecord.created_at))).all()
    finally:
        engine.dispose()
    if not records:
        print(f"error: no signing key in {settings.resolved_database_url} (the hub makes one "
              "when it first starts)", file=sys.stderr)
        return 2
    for r in records:
        print(f"key {r.key_id} ({r.status})  {fingerprint_of_raw(public_key_bytes(r.public_key))}")
    print("compare with the `# <key id>: SHA256:...` lines of a device's agent.toml, or with "
          "`edge-agent check` on the device")
    return 0


def _broker(args: argparse.Namespace, settings: object) -> int:
    from cloud_hub.core.config import Settings
    from cloud_hub.identity.broker_files import init_broker, run_broker
    from cloud_hub.identity.mosquitto import BrokerConfigError

    assert isinstance(settings, Settings)
    folder = args.dir or settings.broker_dir
    if args.action == "sync-roles":
        return _sync_roles(settings)
    if args.action == "audit":
        return _audit(settings, dry_run=args.dry_run)
    try:
        if args.action == "run":
            mosquitto = shutil.which("mosquitto") or shutil.which(
                "mosquitto", path="/usr/sbin:/usr/local/sbin")
            if mosquitto is None:
                print("error: mosquitto is not installed (apt-get install mosquitto)",
                      file=sys.stderr)
                return 2
            if not (folder / "hub.json").exists():
                print(f"error: {folder} has no broker set-up: run `cloud-hub broker init` first",
                      file=sys.stderr)
                return 2
            print(f"mosquitto on {folder / 'mosquitto.conf'} (Ctrl-C stops it)", flush=True)
            return run_broker(folder, mosquitto)
        files = init_broker(
            folder, hub_id=settings.mqtt_client_id, port=args.port,
            hosts=args.hosts or ["127.0.0.1", "localhost"], topics=settings.topics,
            bind=args.bind, ca_cert=args.ca_cert, ca_key=args.ca_key,
            server_cert=args.server_cert, server_key=args.server_key, force=args.force)
    except (BrokerConfigError, FileExistsError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {files.folder}: ca.crt, server certificate, dynamic-security identities "
          f"(broker admin, hub {settings.mqtt_client_id}), mosquitto.conf, hub.json")
    print(f"next: cloud-hub broker run   (TLS on port {files.port}); then cloud-hub serve "
          "reads hub.json from the same data directory")
    return 0


def _on_broker(settings: object, work: Callable[[DynsecClient], int]) -> int:
    """``work`` on the hub's broker-admin connection: exit 2 when the hub has none, 1 with
    the broker's error (or silence)."""
    from cloud_hub.core.config import Settings
    from cloud_hub.identity.dynsec import DynsecError
    from cloud_hub.identity.enrollment import EnrollmentError, hub_admin_client

    assert isinstance(settings, Settings)
    try:
        control = hub_admin_client(settings)
    except EnrollmentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return work(control)
    except DynsecError as exc:
        print(f"error: the broker at {settings.mqtt_host}:{settings.mqtt_port}: {exc}",
              file=sys.stderr)
        return 1
    finally:
        control.stop()


def _sync_roles(settings: object) -> int:
    from cloud_hub.core.config import Settings
    from cloud_hub.identity.enrollment import sync_hub_roles

    assert isinstance(settings, Settings)

    def sync(control: DynsecClient) -> int:
        added = sync_hub_roles(control, settings)
        for line in added:
            print(f"added {line}")
        print(f"the roles of hub {settings.mqtt_client_id} are up to date"
              + (f" ({len(added)} ACL entries added)" if added else ""))
        return 0

    return _on_broker(settings, sync)


def _audit(settings: object, *, dry_run: bool) -> int:
    """One audit of the broker's device credentials (as the hub runs every broker_audit_s);
    exit 1 while something is left for the operator (or, in a dry run, for the audit)."""
    from cloud_hub.cli.db import missing_sqlite_file, no_database
    from cloud_hub.core.config import Settings
    from cloud_hub.db.engine import make_engine
    from cloud_hub.identity.audit import audit_credentials

    assert isinstance(settings, Settings)
    if missing := missing_sqlite_file(settings.resolved_database_url):
        print(no_database(missing), file=sys.stderr)
        return 2

    def audit(control: DynsecClient) -> int:
        engine = make_engine(settings.resolved_database_url)
        try:
            report = audit_credentials(control, engine, dry_run=dry_run)
        finally:
            engine.dispose()
        verb = "would delete" if dry_run else "deleted"
        for device_id, why in sorted(report.deleted.items()):
            print(f"{verb} the credential of {device_id}: {why}")
        for device_id in report.missing:
            print(f"no credential for enrolled device {device_id}: it cannot connect "
                  f"(cloud-hub devices revoke {device_id}, then enroll it again)")
        print(f"{report.device_credentials} device credential(s) on the broker; "
              f"{len(report.deleted)} {verb}, {len(report.missing)} enrolled device(s) "
              "without one")
        return 1 if report.missing or (dry_run and report.deleted) else 0

    return _on_broker(settings, audit)
