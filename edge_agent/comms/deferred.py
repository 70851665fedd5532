"""Keeps a module its importer never uses out of memory: :func:`defer_import` puts a stand-in
in ``sys.modules`` that imports the real module the first time one of its attributes is read."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["defer_import"]


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module until one of its attributes is read, then imports
    the real module (which takes its place) and answers from it."""

    def __getattr__(self, attribute: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        parent, _, child = self.__name__.rpartition(".")
        setattr(sys.modules[parent], child, real)
        return getattr(real, attribute)


def defer_import(name: str) -> None:
    """Defer ``name`` (a dotted submodule, e.g. ``urllib.request``) unless it is loaded already."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    stand_in = _Deferred(name)
    sys.modules[name] = stand_in
    setattr(importlib.import_module(parent), child, stand_in)
