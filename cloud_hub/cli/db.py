"""``cloud-hub db upgrade|current|copy|revision``: the hub's schema, on the database its settings
name, and a copy of another hub database into it (``copy --from``: how a hub moves from SQLite to
PostgreSQL, :mod:`cloud_hub.db.copy`).

Runs in the operator's shell against ``EDGELOOP_DATABASE_URL`` (or the data dir's SQLite file),
like ``serve``; not a client of the REST API.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

__all__ = ["missing_sqlite_file", "no_database", "run_db"]


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
    url = settings.resolved_database_url
    if args.action == "current" and (missing := missing_sqlite_file(url)):
        print(no_database(missing), file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, create=False)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        if args.action == "current":
            now = state(engine)
            if now.up_to_date:
                note = "up to date"
            elif now.too_new:
                note = (f"newer than this hub's {now.head}: a newer hub upgraded it, and this "
                        "one refuses to serve it")
            else:
                note = f"this hub's is {now.head}: cloud-hub db upgrade, or serve, brings it there"
            print(f"{shown}: schema revision {now.current or 'none'} ({note})")
            return 0
        if args.action == "upgrade":
            before = state(engine)
            after = upgrade(engine)
            print(f"{shown}: schema revision {before.current or 'none'} -> {after.current}")
            return 0
        if args.action == "copy":
            return _copy(args, engine, keep_raw_days=settings.retention_raw_days)
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


def no_database(path: str) -> str:
    return (f"error: no hub database at {path} (EDGELOOP_DATA_DIR or EDGELOOP_DATABASE_URL as "
            "cloud-hub serve has them)")


def missing_sqlite_file(url: str) -> str | None:
    """The path of the SQLite file ``url`` names when there is no such file (opening it would
    make an empty database, and its folder, where there was none)."""
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() == "sqlite" and path and path != ":memory:" \
            and not Path(path).is_file():
        return path
    return None


def _copy(args: argparse.Namespace, target: Engine, *, keep_raw_days: float) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from cloud_hub.cli.render import emit
    from cloud_hub.db.copy import CopyError, CopyRefused, copied_tables, copy_database
    from cloud_hub.db.engine import driver_message, make_engine
    from cloud_hub.db.migrate import SchemaTooNew

    if not args.source:
        print("error: db copy needs --from URL (the database to copy from: a SQLAlchemy URL, "
              "or the path of a SQLite file)", file=sys.stderr)
        return 2
    url = args.source if "://" in args.source else f"sqlite:///{Path(args.source).resolve()}"
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).is_file():
        print(f"error: db copy --from {args.source}: no such SQLite file", file=sys.stderr)
        return 2
    try:
        source = make_engine(url, create=False)
    except ArgumentError as exc:
        print(f"error: db copy --from {args.source}: {exc}", file=sys.stderr)
        return 2
    if _same_database(source, target):
        source.dispose()
        print("error: db copy --from names the hub's own database; point EDGELOOP_DATABASE_URL "
              "at the empty database to copy into", file=sys.stderr)
        return 2
    tables = {t.name: i for i, t in enumerate(copied_tables(), 1)}
    # Shown from the first row on: a copy refused before it starts prints only the reason.
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} rows"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                   console=Console(stderr=True))
    task = None

    def shown(table: str, done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(table, total=None, info="")
        bar.update(task, description=table, completed=done, total=total,
                   info=f"table {tables[table]} of {len(tables)}")

    try:
        result = copy_database(source, target, keep_raw_days=keep_raw_days, on_progress=shown)
    except (CopyRefused, CopyError, SchemaTooNew) as exc:
        print(f"error: db copy: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:  # a database that cannot be reached or read
        print(f"error: db copy: {driver_message(exc)}", file=sys.stderr)
        return 1
    finally:
        bar.stop()
        source.dispose()
    rate = result.total / result.seconds if result.seconds > 0 else 0.0
    print(f"copied {result.total} rows from {source.url.render_as_string(hide_password=True)} "
          f"to {target.url.render_as_string(hide_password=True)} in {result.seconds:.1f} s "
          f"({rate:.0f} rows/s); {len(result.partitions_made)} telemetry day partitions made",
          file=sys.stderr)
    emit([{"table": name, "rows": n} for name, n in result.rows.items()], args.json,
         ["table", "rows"], title="rows copied")
    return 0


def _same_database(a: Engine, b: Engine) -> bool:
    if a.url.get_backend_name() == "sqlite" == b.url.get_backend_name():
        return Path(a.url.database or "").resolve() == Path(b.url.database or "").resolve()
    return a.url == b.url
