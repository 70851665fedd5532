"""Builds the configured sensor source: a built-in type or an ``edgeloop.sources`` entry point.

A plugin is a factory ``create_source(options: dict[str, Any]) -> SensorSource`` registered as

    [project.entry-points."edgeloop.sources"]
    my-sensor = "my_package.sensor:create_source"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from edge_agent.sources.base import SensorSource, SourceError

__all__ = ["BUILTIN_SOURCES", "ENTRY_POINT_GROUP", "available_sources", "create_source"]

ENTRY_POINT_GROUP = "edgeloop.sources"
BUILTIN_SOURCES = {
    "csv": "edge_agent.sources.csv_source",
    "stdin": "edge_agent.sources.stdin_source",
    "mqtt": "edge_agent.sources.mqtt_source",
}


def available_sources() -> list[str]:
    from importlib.metadata import entry_points  # here: scanning installed packages is slow

    plugins = [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return sorted(set(BUILTIN_SOURCES) | set(plugins))


def _factory(source_type: str) -> Callable[[dict[str, Any]], SensorSource]:
    if source_type in BUILTIN_SOURCES:
        module = importlib.import_module(BUILTIN_SOURCES[source_type])
        factory: Callable[[dict[str, Any]], SensorSource] = module.create_source
        return factory
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == source_type:
            try:
                loaded: Callable[[dict[str, Any]], SensorSource] = ep.load()
            except ImportError as exc:
                raise SourceError(
                    f"source.type {source_type!r}: plugin {ep.value} cannot be imported: {exc}"
                ) from None
            return loaded
    raise SourceError(
        f"source.type {source_type!r} is unknown; available: {', '.join(available_sources())}"
    )


def create_source(source_type: str, options: dict[str, Any]) -> SensorSource:
    """Build a source, or raise :class:`SourceError` naming the option that is wrong."""
    source = _factory(source_type)(dict(options))
    if not isinstance(source, SensorSource):
        raise SourceError(f"source.type {source_type!r}: the factory returned "
                          f"{type(source).__name__}, not a SensorSource")
    if not source.channels:
        raise SourceError(f"source.type {source_type!r} has no channels")
    return source
