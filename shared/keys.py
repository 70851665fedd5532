"""Pinned Ed25519 public keys and the checks on a signature that need no cryptography library.

Agents import this, not :mod:`shared.signing`: keeping ``cryptography`` (and its OpenSSL) out
of the agent daemon saves about 6 MB of its memory. The curve arithmetic itself runs in
:mod:`shared.signing`, in the hub or, for an agent, in a short-lived child process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

from shared.manifest import Manifest, canonical_bytes

__all__ = [
    "SIGNATURE_BYTES",
    "SignatureError",
    "SignedParts",
    "fingerprint_of_raw",
    "key_id_of_raw",
    "public_key_bytes",
    "signed_parts",
]

_RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# DER of SubjectPublicKeyInfo for Ed25519 (RFC 8410) before the 32 raw key bytes.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class SignatureError(ValueError):
    """A manifest or trust list whose signature is missing, malformed, by an unknown key, or
    wrong."""


def public_key_bytes(text: str) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as base64 of them, or as PEM text."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN PUBLIC KEY-----"):
            body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
            der = base64.b64decode(body, validate=True)
            if len(der) != len(_ED25519_SPKI_PREFIX) + _RAW_KEY_BYTES or not der.startswith(
                _ED25519_SPKI_PREFIX
            ):
                raise SignatureError("public key is not an Ed25519 key")
            return der[len(_ED25519_SPKI_PREFIX) :]
        if text.startswith("-----BEGIN"):
            raise SignatureError(f"public key PEM {text.splitlines()[0]!r} is not a PUBLIC KEY")
        raw = base64.b64decode(text, validate=True)
    except SignatureError:
        raise
    except ValueError as exc:  # binascii.Error, or a str that is not ASCII
        raise SignatureError(f"public key {text[:16]!r}… is not valid base64: {exc}") from None
    if len(raw) != _RAW_KEY_BYTES:
        raise SignatureError(
            f"public key {text[:16]!r}… has {len(raw)} bytes, an Ed25519 key has {_RAW_KEY_BYTES}"
        )
    return raw


def fingerprint_of_raw(raw: bytes) -> str:
    """The whole SHA-256 of a public key, for checking it out of band (the key id is its first
    16 hex digits)."""
    digest = hashlib.sha256(raw).hexdigest()
    return "SHA256:" + " ".join(digest[i:i + 8] for i in range(0, 64, 8))


def key_id_of_raw(raw: bytes) -> str:
    """Short, stable id of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    return hashlib.sha256(raw).hexdigest()[:16]


class SignedParts:
    """What one Ed25519 verification needs: the pinned key, the signature and the message."""

    __slots__ = ("key", "message", "signature")

    def __init__(self, key: bytes, signature: bytes, message: bytes) -> None:
        self.key, self.signature, self.message = key, signature, message


def signed_parts(manifest: Manifest, pinned: Mapping[str, bytes]) -> SignedParts:
    """Check everything about a manifest's signature except the curve arithmetic."""
    key = pinned.get(manifest.key_id)
    if key is None:
        raise SignatureError(
            f"manifest {manifest.name} v{manifest.version} is signed by unknown key id "
            f"{manifest.key_id!r}; pinned: {sorted(pinned) or 'none'}"
        )
    try:
        signature = base64.b64decode(manifest.signature, validate=True)
    except binascii.Error:
        raise SignatureError("manifest signature is not valid base64") from None
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(
            f"manifest signature has {len(signature)} bytes, expected {SIGNATURE_BYTES}"
        )
    return SignedParts(key, signature, canonical_bytes(manifest))
