"""The signed trust list: which Ed25519 keys an agent trusts to sign models, and how that changes.

One retained record per version on ``Topics.trust(n)``. A trust list names its ``version``, the
keys (key id -> public key) and carries signatures by one or more keys. An agent starts from the
keys pinned in its config and applies a newer version only when a key it trusts at that point
signed it; it then trusts exactly the list's keys. Rotating a key is two lists: {old, new} signed
by both (the overlap), then {new} signed by the new key (the old one retired). A device that was
offline meanwhile walks the retained versions in order and arrives at the same set.

The signatures cover :func:`canonical_bytes` (every field but ``signatures``, keys sorted, no
spaces). Like :mod:`shared.manifest` this module needs no cryptography library: the curve
arithmetic runs in :mod:`shared.signing` (hub) or in the agent's verifier child.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Annotated

import msgspec

from shared.keys import (
    SIGNATURE_BYTES,
    SignatureError,
    SignedParts,
    key_id_of_raw,
    public_key_bytes,
)
from shared.messages import EpochSeconds, Frozen, VersionProbe, check_version, describe_error

__all__ = [
    "MAX_KEYS",
    "MAX_TRUST_LIST_BYTES",
    "TRUST_SCHEMA_VERSION",
    "KeySignature",
    "TrustList",
    "TrustListError",
    "TrustedKey",
    "canonical_bytes",
    "parse_trust_list",
    "signed_parts",
]

TRUST_SCHEMA_VERSION = 1
MAX_TRUST_LIST_BYTES = 64 * 1024
MAX_KEYS = 16

KeyId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]
Base64 = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class TrustListError(ValueError):
    """A trust list that cannot be parsed or does not hold together; the text names the field."""


class TrustedKey(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    public_key: Base64  # base64 of the 32 raw Ed25519 public key bytes
    since: EpochSeconds  # when the hub created the key (informational)


class KeySignature(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    key_id: KeyId
    signature: Base64  # base64 of the 64-byte Ed25519 signature over canonical_bytes()


class TrustList(Frozen, frozen=True, forbid_unknown_fields=True, kw_only=True):
    v: int = TRUST_SCHEMA_VERSION
    version: Annotated[int, msgspec.Meta(ge=1)]
    created_at: EpochSeconds
    keys: Annotated[dict[KeyId, TrustedKey], msgspec.Meta(min_length=1, max_length=MAX_KEYS)]
    signatures: Annotated[list[KeySignature], msgspec.Meta(max_length=MAX_KEYS)] = msgspec.field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        check_version(self.v, TRUST_SCHEMA_VERSION, "trust list version")
        for key_id, key in self.keys.items():
            try:
                actual = key_id_of_raw(public_key_bytes(key.public_key))
            except SignatureError as exc:
                raise ValueError(f"keys.{key_id}.public_key: {exc}") from None
            if actual != key_id:
                raise ValueError(f"keys.{key_id}: the public key's id is {actual}, not {key_id}")
        signers = [s.key_id for s in self.signatures]
        if len(set(signers)) != len(signers):
            raise ValueError(f"signatures: key ids {signers} contain duplicates")

    def public_keys(self) -> dict[str, bytes]:
        """key id -> the 32 raw bytes of each key this list trusts."""
        return {key_id: public_key_bytes(k.public_key) for key_id, k in self.keys.items()}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()


def canonical_bytes(trust_list: TrustList) -> bytes:
    """The bytes each signature covers: every field but ``signatures``, sorted, no spaces."""
    data = trust_list.to_dict()
    data.pop("signatures")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def parse_trust_list(payload: bytes | str) -> TrustList:
    """Validate a trust-list payload (signatures are not checked here)."""
    if len(payload) > MAX_TRUST_LIST_BYTES:
        raise TrustListError(
            f"trust list of {len(payload)} bytes exceeds {MAX_TRUST_LIST_BYTES}"
        )
    try:
        return msgspec.json.decode(payload, type=TrustList)
    except msgspec.ValidationError as exc:
        _refuse_unknown_version(payload)
        text = str(exc)
        if " - at `key` in `$." in text:  # a dict key (a key id) that is not valid
            problem, _, where = text.partition(" - at `key` in `$.")
            raise TrustListError(f"trust list field {where.rstrip('`')} (a key id): "
                                 f"{problem}") from None
        raise TrustListError(f"trust list field {describe_error(exc)}") from None
    except msgspec.DecodeError as exc:
        raise TrustListError(f"trust list is not valid JSON: {exc}") from None


def signed_parts(trust_list: TrustList, trusted: Mapping[str, bytes]) -> dict[str, SignedParts]:
    """One check per signature made by a key in ``trusted`` (by key id); signatures by other
    keys are left out (a list may be signed by a key this device does not know yet). Raises
    :class:`SignatureError` when no trusted key signed the list at all, or when a signature by
    a trusted key is malformed."""
    message = canonical_bytes(trust_list)
    parts = {}
    for entry in trust_list.signatures:
        key = trusted.get(entry.key_id)
        if key is None:
            continue
        try:
            signature = base64.b64decode(entry.signature, validate=True)
        except binascii.Error:
            raise SignatureError(
                f"trust list v{trust_list.version}: signature by {entry.key_id} is not valid "
                "base64"
            ) from None
        if len(signature) != SIGNATURE_BYTES:
            raise SignatureError(
                f"trust list v{trust_list.version}: signature by {entry.key_id} has "
                f"{len(signature)} bytes, expected {SIGNATURE_BYTES}"
            )
        parts[entry.key_id] = SignedParts(key, signature, message)
    if not parts:
        raise SignatureError(
            f"trust list v{trust_list.version} is signed by "
            f"{sorted(s.key_id for s in trust_list.signatures) or 'no key'}, none of them "
            f"trusted here (trusted: {sorted(trusted) or 'none'})"
        )
    return parts


def _refuse_unknown_version(payload: bytes | str) -> None:
    try:
        v = msgspec.json.decode(payload, type=VersionProbe).v
    except (msgspec.ValidationError, msgspec.DecodeError):
        return
    try:
        check_version(v, TRUST_SCHEMA_VERSION, "trust list version")
    except ValueError as exc:
        raise TrustListError(f"trust list field v: {exc}") from None
