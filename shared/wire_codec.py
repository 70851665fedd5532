"""Turning wire messages into JSON payloads and back, with errors that name the field and the
value; :mod:`shared.messages` re-exports these functions."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from shared.wire_base import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    Frozen,
    MessageError,
    WireMessage,
    check_version,
)

__all__ = ["VersionProbe", "decode", "describe_error", "encode", "from_dict", "unknown_version",
           "with_floor"]

M = TypeVar("M", bound=Frozen)


class VersionProbe(msgspec.Struct):
    """Reads only ``v`` of a payload, to name an unknown version before anything else."""

    v: Any = None


def encode(message: Frozen) -> bytes:
    """Serialise a message to its JSON payload (fields a newer build added are left out while
    they are None, where the message says so: readers of an older build refuse them)."""
    optional: tuple[str, ...] = getattr(message, "omit_when_none", ())
    if optional and any(getattr(message, name) is None for name in optional):
        data = msgspec.to_builtins(message)
        for name in optional:
            if data.get(name) is None:
                data.pop(name, None)
        return msgspec.json.encode(data)
    return msgspec.json.encode(message)


def with_floor(payload: bytes, floor: int) -> bytes:
    """A telemetry or anomaly payload with its ``floor`` set as the sender sends it (the
    outbox stores a message once, and the lowest seq held changes while it waits). Values
    are copied as raw JSON (or MessagePack, :mod:`shared.packed`), not parsed again."""
    # shared.packed imports shared.messages, which imports this module: import it on use.
    from shared.packed import is_msgpack, with_floor_packed

    if is_msgpack(payload):
        return with_floor_packed(payload, floor)
    fields = msgspec.json.decode(payload, type=dict[str, msgspec.Raw])
    fields["floor"] = msgspec.Raw(str(int(floor)).encode())
    return msgspec.json.encode(fields)


def decode(cls: type[M], payload: bytes | str) -> M:
    """Parse and validate a payload as ``cls``, or raise :class:`MessageError` saying why."""
    size = len(payload)
    limit = min(MAX_PAYLOAD_BYTES, getattr(cls, "max_bytes", MAX_PAYLOAD_BYTES))
    if size > limit:
        raise MessageError(
            f"{cls.__name__}: payload of {size} bytes exceeds the limit of {limit}"
        )
    try:
        return msgspec.json.decode(payload, type=cls)
    except msgspec.ValidationError as exc:
        _refuse_unknown_version(cls, payload)
        raise MessageError(f"{cls.__name__}: {describe_error(exc)}") from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"{cls.__name__}: Invalid JSON: {_json_problem(exc, payload)}") from None
    except UnicodeDecodeError as exc:  # msgspec raises it for a key that is not UTF-8
        raise MessageError(f"{cls.__name__}: Invalid JSON: a string is not UTF-8 "
                           f"({exc.reason})") from None


def from_dict(cls: type[M], data: Any) -> M:
    """Validate already-parsed data (a dict from JSON, TOML or code) as ``cls``, strictly."""
    try:
        return msgspec.convert(data, type=cls)
    except msgspec.ValidationError as exc:
        raise MessageError(f"{cls.__name__}: {describe_error(exc)}") from None


def unknown_version(payload: bytes | str, known: int, what: str) -> str | None:
    """Why ``payload``'s ``v`` is refused (``what`` names it), or None when it is ``known`` or
    cannot be read: a newer schema may differ in any field, so a decoder that failed names the
    version first, not the first field that differs."""
    try:
        v = msgspec.json.decode(payload, type=VersionProbe).v
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    try:
        check_version(v, known, what)
    except ValueError as exc:
        return str(exc)
    return None


def _refuse_unknown_version(cls: type[Frozen], payload: bytes | str) -> None:
    if not issubclass(cls, WireMessage):
        return
    reason = unknown_version(payload, SCHEMA_VERSION, "schema version")
    if reason is not None:
        raise MessageError(f"{cls.__name__}: {reason}")


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def describe_error(exc: msgspec.ValidationError) -> str:
    """msgspec's message with its ``$.a[0].b`` location turned into ``a.0.b: …`` first."""
    text = str(exc)
    match = _AT.search(text)
    if text.startswith("Object contains unknown field"):
        name = text.split("`")[1]
        where = _dotted(match.group("path")) if match else ""
        return f"{where + '.' if where else ''}{name}: unknown field (extra fields are refused)"
    if match is None:
        return f"payload: {text}"
    return f"{_dotted(match.group('path')) or 'payload'}: {text[: match.start()]}"


def _dotted(path: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".").replace("[...]", ".*")


def _json_problem(exc: msgspec.DecodeError, payload: bytes | str) -> str:
    text = str(exc)
    match = re.search(r"\(byte (\d+)\)", text)
    if match:
        at = int(match.group(1))
        raw = payload.encode() if isinstance(payload, str) else payload
        if raw[at : at + 3] in (b"NaN", b"Inf", b"-In"):
            return f"non-finite number at byte {at}: every value must be finite"
    return text
