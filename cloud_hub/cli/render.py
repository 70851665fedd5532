"""Terminal output of the CLI: rich tables for people, JSON for machines."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["console", "emit", "fmt", "table"]


def console() -> Console:
    """A console on the current stdout; piped output gets wide lines instead of folded ones."""
    return Console(width=None if sys.stdout.isatty() else 200)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value > 1e9:  # epoch seconds
            return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        return f"{value:.4g}"
    if isinstance(value, dict) and {"name", "version"} <= set(value):
        return f"{value['name']}:{value['version']}"
    if isinstance(value, list):
        return ",".join(fmt(v) for v in value)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    t = Table(title=title or None)
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*(fmt(row.get(c)) for c in columns))
    console().print(t)


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None, title: str = "") -> None:
    """Print ``data`` as JSON, a table (list of dicts) or key/value lines (one dict)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if isinstance(data, list):
        table(data, columns or (list(data[0]) if data else []), title)
    elif isinstance(data, dict):
        t = Table(title=title or None, show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value")
        for key, value in data.items():
            shown = json.dumps(value, default=str) if isinstance(value, dict) else fmt(value)
            t.add_row(key, shown)
        console().print(t)
    else:
        console().print(data)
