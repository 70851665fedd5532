"""The on-disk model store: resumable chunked download, verification, current/previous pointers.

Layout under ``root``::

    <name>/<version>/manifest.json     the signed manifest, saved once its signature verified
    <name>/<version>/chunks/<i>        chunks received so far (each checked against its hash)
    <name>/<version>/model.tflite      the whole file, written only after size + sha256 matched
    <name>/<version>/calibration.json  this device's own threshold, when calibrated
    current.json / previous.json       pointers, switched with os.replace

    releases.json                      per model name, the highest release installed
    .switch/<name>/<version>/          another variant of the running version, downloaded and
                                       checked there before it takes the version's place

A version's directory holds one variant. Another variant of the version that runs is fetched
into :meth:`ModelStore.switch_store` (the same layout, keys, checks and release floor), so the
running one stays on disk until the new one has passed its shadow run; :meth:`take_switch` then
puts it in the version's place.

Nothing is loaded unless the manifest's Ed25519 signature verifies against a trusted key and the
file's size and sha256 match it; both are checked again every time a model is read back. A
manifest from the network must be signed by a key trusted now and carry a release no lower than
the highest this device installed for that name; a model already installed here is read back
against every key the device has trusted through its chain (a key retired since still vouches
for what it signed while it was trusted).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.models.atomic import write_atomic
from edge_agent.models.releases import ReleaseFloor
from edge_agent.models.verify import verify_manifest_isolated
from shared.codec import ChunkError, check_chunk, reassemble, sha256_hex
from shared.keys import SignatureError
from shared.manifest import Manifest, ManifestError, parse_manifest

__all__ = [
    "FixedKeys", "ManifestVerifier", "ModelPointer", "ModelStore", "StoreError", "TrustedKeys",
    "write_atomic",
]

# Raises SignatureError unless a key among the given ones signed the manifest. The agent checks in
# an isolated child (no cryptography library kept resident); a simulator running a thousand
# devices in one process, which has the library loaded anyway, checks in-process.
ManifestVerifier = Callable[[Manifest, Mapping[str, bytes]], None]

log = logging.getLogger(__name__)

SWITCH_DIR = ".switch"


class StoreError(RuntimeError):
    """A model that must not be used; the text is the reason reported to the hub."""


@dataclass(frozen=True)
class ModelPointer:
    name: str
    version: int
    sha256: str
    activated_at: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


class TrustedKeys(Protocol):
    """Key id → the 32 raw bytes of each Ed25519 public key (see :mod:`edge_agent.trust`)."""

    def trusted(self) -> Mapping[str, bytes]:
        """The keys that may sign what arrives now."""
        ...

    def known(self) -> Mapping[str, bytes]:
        """Every key trusted at some point (for models installed while it was)."""
        ...


class FixedKeys:
    """A key set that never changes (the pinned keys alone)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = dict(keys)

    def trusted(self) -> Mapping[str, bytes]:
        return self._keys

    def known(self) -> Mapping[str, bytes]:
        return self._keys


class ModelStore:
    def __init__(self, root: Path, trusted: Mapping[str, bytes] | TrustedKeys, *,
                 verify: ManifestVerifier = verify_manifest_isolated,
                 releases: ReleaseFloor | None = None) -> None:
        """``trusted``: the device's key ring, or fixed key id → raw public key bytes."""
        self.root = Path(root)
        self._verify = verify
        self.keys: TrustedKeys = FixedKeys(trusted) if isinstance(trusted, Mapping) else trusted
        self.root.mkdir(parents=True, exist_ok=True)
        self.releases = releases or ReleaseFloor(self.root / "releases.json",
                                                 rebuild=self._installed)
        self._switch: ModelStore | None = None

    # -- another variant of the running version ----------------------------------------------
    def switch_store(self) -> ModelStore:
        """Where another variant of the running version is downloaded and checked: this
        store's keys, signature check and release floor, under ``.switch/``."""
        if self._switch is None:
            self._switch = ModelStore(self.root / SWITCH_DIR, self.keys, verify=self._verify,
                                      releases=self.releases)
        return self._switch

    def take_switch(self, manifest: Manifest) -> None:
        """Put the variant of ``manifest`` downloaded into :meth:`switch_store` in its version's
        place, replacing the variant stored there (two renames: a crash between them leaves no
        such version, and the agent starts on its previous model)."""
        staged = self.switch_store().version_dir(manifest.name, manifest.version)
        if not (staged / "model.tflite").exists():
            raise StoreError(f"{manifest.name} v{manifest.version}: no switched variant staged")
        target = self.version_dir(manifest.name, manifest.version)
        replaced = target.with_name(f"{target.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        if target.exists():
            os.replace(target, replaced)
        os.replace(staged, target)
        shutil.rmtree(replaced, ignore_errors=True)

    def drop_switch(self) -> None:
        """Delete whatever another variant's download left under ``.switch/``."""
        shutil.rmtree(self.root / SWITCH_DIR, ignore_errors=True)
        self._switch = None

    # -- paths -------------------------------------------------------------------------
    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def _chunk_path(self, manifest: Manifest, index: int) -> Path:
        return self.version_dir(manifest.name, manifest.version) / "chunks" / str(index)

    def model_path(self, name: str, version: int) -> Path:
        return self.version_dir(name, version) / "model.tflite"

    # -- manifest ----------------------------------------------------------------------
    def accept_manifest(self, payload: bytes, *, name: str, version: int,
                        variant: str | None = None) -> Manifest:
        """Parse and verify a manifest received for ``name`` v``version`` (its variant
        ``variant``, when one was asked for), then keep it."""
        try:
            manifest = parse_manifest(payload)
        except ManifestError as exc:
            raise StoreError(f"manifest for {name} v{version} rejected: {exc}") from None
        if (manifest.name, manifest.version) != (name, version):
            raise StoreError(
                f"manifest published for {name} v{version} describes "
                f"{manifest.name} v{manifest.version}"
            )
        if variant is not None and manifest.quantization.value != variant:
            # another variant's manifest, validly signed, republished at this variant's topic
            raise StoreError(
                f"manifest published for {name} v{version} variant {variant} describes variant "
                f"{manifest.quantization.value}"
            )
        floor = self.releases.get(name)
        if manifest.release < floor:
            raise StoreError(
                f"manifest {name} v{version} is release {manifest.release}, older than release "
                f"{floor} installed here: refused as a replay or downgrade (a rollback comes "
                "from the hub as a new release)"
            )
        self.verify_signature(manifest, self.keys.trusted())
        write_atomic(self.version_dir(name, version) / "manifest.json", manifest.to_bytes())
        return manifest

    def verify_signature(self, manifest: Manifest, keys: Mapping[str, bytes]) -> None:
        try:
            self._verify(manifest, keys)
        except SignatureError as exc:
            raise StoreError(f"signature check failed: {exc}") from None

    def saved_manifest(self, name: str, version: int) -> Manifest | None:
        path = self.version_dir(name, version) / "manifest.json"
        try:
            manifest = parse_manifest(path.read_bytes())
        except FileNotFoundError:
            return None
        except ManifestError as exc:
            log.warning("saved manifest %s is unreadable (%s); fetching it again", path, exc)
            return None
        return manifest

    def discard(self, name: str, version: int) -> bool:
        """Delete what is stored of ``name`` v``version`` (before fetching another variant of
        it), unless it is the current model; whether it was deleted."""
        current = self.current()
        if current is not None and (current.name, current.version) == (name, version):
            return False
        shutil.rmtree(self.version_dir(name, version), ignore_errors=True)
        return True

    # -- chunks ------------------------------------------------------------------------
    def missing_chunks(self, manifest: Manifest) -> list[int]:
        count = manifest.chunks.count
        return [i for i in range(count) if not self._chunk_path(manifest, i).exists()]

    def check_chunk(self, manifest: Manifest, index: int, data: bytes) -> None:
        """Raise ChunkError unless ``data`` is chunk ``index`` of ``manifest`` (its sha256)."""
        if not 0 <= index < manifest.chunks.count:
            raise ChunkError(f"chunk {index} is outside 0..{manifest.chunks.count - 1}")
        check_chunk(index, data, manifest.chunks.sha256[index])

    def put_chunk(self, manifest: Manifest, index: int, data: bytes) -> None:
        """Keep chunk ``index`` if its sha256 matches the manifest; raise ChunkError if not."""
        self.check_chunk(manifest, index, data)
        write_atomic(self._chunk_path(manifest, index), data)

    def has_model(self, manifest: Manifest) -> bool:
        path = self.model_path(manifest.name, manifest.version)
        return path.exists() and path.stat().st_size == manifest.size

    def assemble(self, manifest: Manifest) -> Path:
        """Join the chunks, check size and sha256, write ``model.tflite``, drop the chunks."""
        self.install(manifest)
        return self.model_path(manifest.name, manifest.version)

    def install(self, manifest: Manifest, received: Mapping[int, bytes] | None = None) -> bytes:
        """Join the chunks (those in ``received``, already checked against their hashes, from
        memory; the others from disk), check size and sha256, write ``model.tflite``, drop the
        chunk files; the model's bytes. A download that ends in this process need not write
        its last chunks to disk only to read them back."""
        have = received or {}
        chunks = []
        for i in range(manifest.chunks.count):
            chunk = have.get(i)
            if chunk is None:
                try:
                    chunk = self._chunk_path(manifest, i).read_bytes()
                except FileNotFoundError:
                    raise StoreError(f"chunk {i} of {manifest.name} v{manifest.version} is "
                                     "missing") from None
            chunks.append(chunk)
        try:
            data = reassemble(chunks, chunk_hashes=manifest.chunks.sha256, size=manifest.size,
                              sha256=manifest.sha256)
        except ChunkError as exc:
            shutil.rmtree(self.version_dir(manifest.name, manifest.version) / "chunks",
                          ignore_errors=True)
            raise StoreError(f"model file rejected: {exc}") from None
        path = self.model_path(manifest.name, manifest.version)
        write_atomic(path, data)
        chunk_dir = path.parent / "chunks"
        if chunk_dir.exists():
            shutil.rmtree(chunk_dir, ignore_errors=True)
        return data

    def read_verified(self, name: str, version: int) -> tuple[Manifest, bytes]:
        """Manifest and model bytes, checked again (signature, size, sha256) before any load."""
        manifest = self.saved_manifest(name, version)
        if manifest is None:
            raise StoreError(f"{name} v{version}: no manifest on disk")
        self.verify_signature(manifest, self.keys.known())
        try:
            data = self.model_path(name, version).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{name} v{version}: model file is missing") from None
        if len(data) != manifest.size:
            raise StoreError(
                f"{name} v{version}: model file is {len(data)} bytes, the manifest says "
                f"{manifest.size} (truncated or replaced)"
            )
        actual = sha256_hex(data)
        if actual != manifest.sha256:
            raise StoreError(
                f"{name} v{version}: model file sha256 {actual[:12]}… does not match the "
                f"manifest's {manifest.sha256[:12]}…"
            )
        return manifest, data

    # -- pointers ----------------------------------------------------------------------
    def _read_pointer(self, which: str) -> ModelPointer | None:
        path = self.root / f"{which}.json"
        try:
            raw = json.loads(path.read_text())
            return ModelPointer(str(raw["name"]), int(raw["version"]), str(raw["sha256"]),
                                float(raw.get("activated_at", 0.0)))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error("model pointer %s is unreadable: %s", path, exc)
            return None

    def _write_pointer(self, which: str, pointer: ModelPointer | None) -> None:
        path = self.root / f"{which}.json"
        if pointer is None:
            path.unlink(missing_ok=True)
            return
        write_atomic(path, json.dumps(pointer.__dict__, sort_keys=True).encode())

    def current(self) -> ModelPointer | None:
        return self._read_pointer("current")

    def previous(self) -> ModelPointer | None:
        return self._read_pointer("previous")

    def activate(self, manifest: Manifest) -> ModelPointer:
        """Make ``manifest`` current; the model it replaces becomes ``previous``. The release
        floor of its name rises to its release."""
        self.releases.raise_to(manifest.name, manifest.release)
        old = self.current()
        new = ModelPointer(manifest.name, manifest.version, manifest.sha256, time.time())
        if old is not None and (old.name, old.version) != (new.name, new.version):
            self._write_pointer("previous", old)
        self._write_pointer("current", new)
        return new

    def rollback(self) -> ModelPointer | None:
        """Make ``previous`` current again (the failed one is not kept as a rollback target)."""
        target = self.previous()
        self._write_pointer("current", target)
        self._write_pointer("previous", None)
        return target

    def clear_current(self) -> None:
        self._write_pointer("current", None)

    def prune(self) -> None:
        """Delete every version that is neither current, previous nor mid-download."""
        keep = {(p.name, str(p.version)) for p in (self.current(), self.previous()) if p}
        for name_dir in self.root.iterdir():
            if not name_dir.is_dir() or name_dir.name == SWITCH_DIR:
                continue
            for version_dir in name_dir.iterdir():
                complete = (version_dir / "model.tflite").exists()
                if complete and (name_dir.name, version_dir.name) not in keep:
                    shutil.rmtree(version_dir, ignore_errors=True)

    def _installed(self) -> Iterator[tuple[str, int]]:
        """(name, release) of every complete model on disk (to rebuild a lost floor from)."""
        for path in self.root.glob("*/*/model.tflite"):
            if not path.parent.name.isdigit():
                continue
            manifest = self.saved_manifest(path.parent.parent.name, int(path.parent.name))
            if manifest is not None:
                yield manifest.name, manifest.release

    # -- calibration ---------------------------------------------------------------------
    def save_calibration(self, manifest: Manifest, info: dict[str, Any]) -> None:
        record = dict(info, sha256=manifest.sha256)
        write_atomic(self.version_dir(manifest.name, manifest.version) / "calibration.json",
                     json.dumps(record, sort_keys=True).encode())

    def load_calibration(self, manifest: Manifest) -> dict[str, Any] | None:
        path = self.version_dir(manifest.name, manifest.version) / "calibration.json"
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("calibration %s is unreadable (%s); calibrating again", path, exc)
            return None
        if record.get("sha256") != manifest.sha256:
            return None
        return record
