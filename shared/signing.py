"""Ed25519 signing of manifests by the hub, verification against pinned keys by agents."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.manifest import Manifest, canonical_bytes

__all__ = [
    "SignatureError",
    "SigningKey",
    "generate_signing_key",
    "key_id_of",
    "load_public_key",
    "verify_manifest",
]


class SignatureError(ValueError):
    """A manifest whose signature is missing, malformed, by an unknown key, or wrong."""


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public: Ed25519PublicKey) -> str:
    """Short, stable id of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes, or from PEM text."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("public key is not an Ed25519 key")
            return key
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except SignatureError:
        raise
    except ValueError as exc:
        raise SignatureError(f"public key {text[:16]!r}… is not valid: {exc}") from None


class SigningKey:
    """The hub's private key, with the operations the hub needs."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id_of(self.public)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the key at ``path``, creating it (mode 0600) the first time."""
        if path.exists():
            return cls.load(path)
        key = generate_signing_key()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = key._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return key

    def public_b64(self) -> str:
        return base64.b64encode(_raw_public(self.public)).decode()

    def sign(self, manifest: Manifest) -> Manifest:
        """The manifest with ``key_id`` set to this key and a fresh signature."""
        stamped = manifest.model_copy(update={"key_id": self.key_id, "signature": ""})
        signature = self._private.sign(canonical_bytes(stamped))
        return stamped.model_copy(update={"signature": base64.b64encode(signature).decode()})


def generate_signing_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


def verify_manifest(manifest: Manifest, pinned: dict[str, Ed25519PublicKey]) -> None:
    """Raise :class:`SignatureError` unless a pinned key with the manifest's key id signed it."""
    public = pinned.get(manifest.key_id)
    if public is None:
        raise SignatureError(
            f"manifest {manifest.name} v{manifest.version} is signed by unknown key id "
            f"{manifest.key_id!r}; pinned: {sorted(pinned) or 'none'}"
        )
    try:
        signature = base64.b64decode(manifest.signature, validate=True)
    except ValueError:
        raise SignatureError("manifest signature is not valid base64") from None
    if len(signature) != 64:
        raise SignatureError(f"manifest signature has {len(signature)} bytes, expected 64")
    try:
        public.verify(signature, canonical_bytes(manifest))
    except InvalidSignature:
        raise SignatureError(
            f"manifest {manifest.name} v{manifest.version}: signature does not verify "
            f"with key {manifest.key_id}"
        ) from None
