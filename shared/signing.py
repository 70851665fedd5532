"""Ed25519 signing of manifests and trust lists by the hub, and verification against pinned keys.

The hub (and tools) use this module; it needs ``cryptography``. Agents verify through
:mod:`edge_agent.models.verify`, which runs :func:`verify_parts` in a short-lived child process.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared import trust
from shared.keys import SignatureError, SignedParts, key_id_of_raw, public_key_bytes, signed_parts
from shared.manifest import Manifest, canonical_bytes, manifest_from_dict

__all__ = [
    "SignatureError",
    "SigningKey",
    "generate_signing_key",
    "key_id_of",
    "load_public_key",
    "public_key_of",
    "sign_trust_list",
    "verify_manifest",
    "verify_parts",
    "verify_trust_list",
]


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public: Ed25519PublicKey | bytes) -> str:
    """Short, stable id of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    return key_id_of_raw(public if isinstance(public, bytes) else _raw_public(public))


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes, or from PEM text."""
    return Ed25519PublicKey.from_public_bytes(public_key_bytes(text))


class SigningKey:
    """The hub's private key, with the operations the hub needs."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.public_raw = _raw_public(self.public)
        self.key_id = key_id_of_raw(self.public_raw)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the key at ``path``, creating it (mode 0600) the first time. Processes that
        create it at once (hubs started together on one key volume) all end with the one key
        that got there first: the file is put in place only if it is not there yet."""
        if path.exists():
            return cls.load(path)
        key = generate_signing_key()
        try:
            key.save(path, replace=False)
        except FileExistsError:
            return cls.load(path)
        return key

    def save(self, path: Path, *, replace: bool = True) -> None:
        """Write the private key as PEM, readable by its owner only (0600), atomically: a
        reader sees the whole file or none. ``replace=False`` raises FileExistsError, and
        leaves the file as it is, when ``path`` exists."""
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # A name of its own (mode 0600 from mkstemp): two writers never share a temporary file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # atomic, and refused when path exists
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links: an exclusive create
                    _write_new(path, pem)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    def sign(self, manifest: Manifest) -> Manifest:
        """The manifest with ``key_id`` set to this key and a fresh signature.

        The manifest is validated first, through the same decoding an agent does, so what is
        signed is exactly what a device will check (an int where a float belongs, say, would
        otherwise change the canonical bytes between here and the device)."""
        stamped = manifest_from_dict(manifest.replace(key_id=self.key_id, signature="").to_dict())
        signature = self._private.sign(canonical_bytes(stamped))
        return stamped.replace(signature=base64.b64encode(signature).decode())

    def sign_bytes(self, message: bytes) -> str:
        """Base64 of the Ed25519 signature of ``message``."""
        return base64.b64encode(self._private.sign(message)).decode()

    def __repr__(self) -> str:  # never the private key, in a log or a traceback
        return f"SigningKey(key_id={self.key_id!r})"


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (0600) with ``data``, or FileExistsError if it is there; a reader may
    see it part-written, which the hard link in :meth:`SigningKey.save` avoids where it can."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def generate_signing_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


@functools.lru_cache(maxsize=64)
def public_key_of(raw: bytes) -> Ed25519PublicKey:
    """The loaded public key of 32 raw bytes, loaded once per process.

    A key object is immutable and holds no verification result: an agent keeps its pinned
    keys loaded, as a process of simulated agents shares them. Loading one was an eighth of
    a signature check (py-spy, bench/rollout.py). Bad bytes raise ``ValueError`` (not cached).
    """
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_parts(parts: SignedParts) -> bool:
    """The Ed25519 check itself: True when the signature is good (checked on every call)."""
    try:
        public_key_of(parts.key).verify(parts.signature, parts.message)
    except InvalidSignature:
        return False
    return True


def verify_manifest(
    manifest: Manifest, pinned: Mapping[str, bytes] | Mapping[str, Ed25519PublicKey]
) -> None:
    """Raise :class:`SignatureError` unless a pinned key with the manifest's key id signed it."""
    raw = {k: v if isinstance(v, bytes) else _raw_public(v) for k, v in pinned.items()}
    if not verify_parts(signed_parts(manifest, raw)):
        raise SignatureError(
            f"manifest {manifest.name} v{manifest.version}: signature does not verify "
            f"with key {manifest.key_id}"
        )


def sign_trust_list(unsigned: trust.TrustList, keys: list[SigningKey]) -> trust.TrustList:
    """``unsigned`` with one signature by each of ``keys``, validated as an agent decodes it."""
    checked = trust.parse_trust_list(unsigned.replace(signatures=[]).to_bytes())
    message = trust.canonical_bytes(checked)
    return checked.replace(signatures=[
        trust.KeySignature(key_id=k.key_id, signature=k.sign_bytes(message)) for k in keys
    ])


def verify_trust_list(trust_list: trust.TrustList, trusted: Mapping[str, bytes]) -> None:
    """Raise :class:`SignatureError` unless a key in ``trusted`` signed ``trust_list`` and every
    signature by a trusted key verifies (the agent's rule)."""
    if not all(verify_parts(p) for p in trust.signed_parts(trust_list, trusted).values()):
        raise SignatureError(
            f"trust list v{trust_list.version}: a signature by a trusted key does not verify"
        )
