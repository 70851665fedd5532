"""``cloud-hub db upgrade|current|revision``: the hub's schema, on the database its settings name.

Runs in the operator's shell against ``EDGELOOP_DATABASE_URL`` (or the data dir's SQLite file),
like ``serve``; not a client of the REST API.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import create_engine

__all__ = ["run_db"]


def run_db(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cloud_hub.core.config import Settings
    from cloud_hub.core.settings_doc import setting_errors
    from cloud_hub.db.engine import make_engine
    from cloud_hub.db.migrate import SchemaTooNew, alembic_config, state, upgrade

    try:
        settings = Settings()
    except ValidationError as exc:
        for line in setting_errors(exc):
            print(f"error: {line}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    engine = make_engine(url, create=False)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        if args.action == "current":
            now = state(engine)
            note = "up to date" if now.up_to_date else f"this hub's is {now.head}"
            print(f"{shown}: schema revision {now.current or 'none'} ({note})")
            return 0
        if args.action == "upgrade":
            before = state(engine)
            after = upgrade(engine)
            print(f"{shown}: schema revision {before.current or 'none'} -> {after.current}")
            return 0
        from alembic import command

        if not args.message:
            print("error: db revision needs -m 'what the migration changes'", file=sys.stderr)
            return 2
        with create_engine(url).begin() as conn:
            command.revision(alembic_config(conn), message=args.message, autogenerate=True)
        return 0
    except SchemaTooNew as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
