"""Option types of the CLI: argparse calls them while parsing, so a bad value is refused with
the option's name and usage before any request reaches the hub."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["json_object", "model_ref", "positive_float"]


def model_ref(text: str) -> tuple[str, int]:
    """``NAME:VERSION`` as (name, version), the version a whole number from 1."""
    name, sep, version = text.rpartition(":")
    if not sep or not name or not version.isdigit() or int(version) < 1:
        raise argparse.ArgumentTypeError(f"model {text!r} must be NAME:VERSION, e.g. pump-ae:3")
    return name, int(version)


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (``{"canary_size": 2}``); the parser's own message names where it broke."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object, e.g. "
                                         '\'{"wave_size": 20}\'')
    return value


def positive_float(text: str) -> float:
    """Seconds to wait or poll: more than zero (a negative sleep fails, zero never pauses)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value
