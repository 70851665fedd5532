"""Alembic's environment for the hub: run on the connection :mod:`cloud_hub.db.migrate` hands in.

There is no alembic.ini: ``cloud-hub db upgrade`` (and ``serve`` at start-up) build the
configuration in code, so the hub's own database URL and engine settings are used.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import cloud_hub.db.engine  # noqa: F401  (every table on SQLModel.metadata, for autogenerate)
from cloud_hub.db.partitions import include_name

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
    compare_type=True,
    include_name=include_name,  # the telemetry partitions are made at run time
)
with context.begin_transaction():
    context.run_migrations()
