"""The device's key ring: the keys it trusts to sign models, moved on only by signed trust lists.

A fresh device trusts the keys pinned in its ``agent.toml`` (``[trust.keys]``): the root of
trust. The hub publishes signed trust lists, one retained record per version; the ring applies a
newer version only when a key it trusts at that point signed it (every signature by such a key
must verify), and then trusts exactly that list's keys. Lists may arrive in any order (the
broker hands out retained records as it likes): one that no trusted key signed waits, bounded,
until an earlier list makes its signer trusted, so a device that was offline through several
rotations walks them in order. A version not newer than the ring's is refused (replay or
downgrade).

What was applied is persisted (``trust.json`` in the state dir, written atomically) as the
signed lists themselves, and checked again from the pinned root at every start: a changed or
damaged file, or a new root in the config, can only shorten the chain, never add a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.models.atomic import write_atomic
from edge_agent.models.verify import verify_isolated
from shared import trust
from shared.keys import SignatureError, SignedParts, public_key_bytes

__all__ = ["KeyRing", "TRUST_FILE", "TrustOutcome", "open_keyring"]

log = logging.getLogger(__name__)

TRUST_FILE = "trust.json"
MAX_PENDING = 16
_MAX_DECIDED = 4096
_STATE_VERSION = 1

Verifier = Callable[[Sequence[SignedParts]], list[bool]]


@dataclass(frozen=True)
class TrustOutcome:
    """What one offered trust list did: ``applied`` versions, and a refusal's reason."""

    applied: tuple[int, ...] = ()
    refused: str | None = None
    waiting: bool = False


def open_keyring(pinned: Mapping[str, str], state_dir: Path, *,
                 read_only: bool = False, verify: Verifier = verify_isolated) -> KeyRing:
    """The ring of a device: ``pinned`` as in ``[trust.keys]``, the chain in ``state_dir``
    (``read_only``: never write it, e.g. for ``edge-agent check``)."""
    ring = KeyRing({key_id: public_key_bytes(text) for key_id, text in pinned.items()},
                   Path(state_dir) / TRUST_FILE, read_only=read_only, verify=verify)
    ring.load()
    return ring


class KeyRing:
    def __init__(self, root: Mapping[str, bytes], path: Path, *,
                 verify: Verifier = verify_isolated, read_only: bool = False) -> None:
        """``root``: the pinned keys (key id -> raw public key); ``path``: the state file."""
        self.root = dict(root)
        self.path = path
        self._read_only = read_only
        self._verify = verify
        self._chain: list[tuple[trust.TrustList, bytes]] = []
        self._trusted: dict[str, bytes] = dict(root)
        self._known: dict[str, bytes] = dict(root)
        self._pending: dict[int, tuple[trust.TrustList, bytes]] = {}
        self._decided: set[str] = set()  # (version, payload) applied or refused: stay quiet
        self.refused = 0
        self.last_error: str | None = None

    # -- what the model store asks -----------------------------------------------------------
    @property
    def version(self) -> int:
        """The version of the last applied trust list (0: the pinned keys only)."""
        return self._chain[-1][0].version if self._chain else 0

    def trusted(self) -> Mapping[str, bytes]:
        return self._trusted

    def known(self) -> Mapping[str, bytes]:
        return self._known

    def waiting(self) -> list[int]:
        return sorted(self._pending)

    # -- start-up ----------------------------------------------------------------------------
    def load(self) -> None:
        """Re-check the persisted chain from the pinned root (one verifier child for all)."""
        payloads = self._read_state()
        lists: list[tuple[trust.TrustList, bytes]] = []
        for i, payload in enumerate(payloads):
            try:
                lists.append((trust.parse_trust_list(payload), payload))
            except trust.TrustListError as exc:
                log.error("%s: entry %d is unusable (%s); trusting the chain before it",
                          self.path, i, exc)
                break
        # Every signature by a key the chain could trust by then, checked in one batch.
        seen: dict[str, bytes] = dict(self.root)
        batch: list[tuple[int, str, SignedParts]] = []
        for i, (doc, _) in enumerate(lists):
            try:
                batch += [(i, key_id, p) for key_id, p in trust.signed_parts(doc, seen).items()]
            except SignatureError:
                pass  # no key known by then signed it: the walk below stops here
            seen.update(doc.public_keys())
        try:
            results = self._verify([p for _, _, p in batch]) if batch else []
        except SignatureError as exc:
            log.error("cannot check the persisted trust chain (%s); trusting the pinned keys "
                      "until trust lists arrive again", exc)
            lists, results = [], []
        good: dict[tuple[int, str], bool] = {
            (i, key_id): ok for (i, key_id, _), ok in zip(batch, results, strict=True)
        }
        for i, (doc, payload) in enumerate(lists):
            signers = [s.key_id for s in doc.signatures if s.key_id in self._trusted]
            if doc.version <= self.version or not signers or not all(
                good.get((i, key_id), False) for key_id in signers
            ):
                log.error("%s: trust list v%d does not follow from the pinned keys; the chain "
                          "stops at v%d", self.path, doc.version, self.version)
                self._save()
                break
            self._apply(doc, payload, persist=False)
        if self._chain:
            log.info("trust: list v%d, keys %s", self.version, sorted(self._trusted))

    def _read_state(self) -> list[bytes]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            log.error("%s is unreadable (%s); trusting the pinned keys", self.path, exc)
            return []
        try:
            if raw.get("v") != _STATE_VERSION:
                raise ValueError(f"state version {raw.get('v')!r}")
            return [base64.b64decode(p, validate=True) for p in raw["chain"]]
        except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
            log.error("%s has an unknown shape (%s); trusting the pinned keys", self.path, exc)
            return []

    # -- trust lists from the broker ---------------------------------------------------------
    def offer(self, version: int, payload: bytes) -> TrustOutcome:
        """A retained trust list arrived on ``Topics.trust(version)``."""
        if not payload:
            return TrustOutcome()
        digest = _digest(version, payload)
        if digest in self._decided:
            return TrustOutcome()  # the same record again (every reconnect re-sends them)
        try:
            doc = trust.parse_trust_list(payload)
        except trust.TrustListError as exc:
            return TrustOutcome(refused=self._refuse(digest, f"trust/{version}: {exc}"))
        if doc.version != version:
            return TrustOutcome(refused=self._refuse(
                digest, f"trust/{version} holds a list that says version {doc.version}"))
        if doc.version <= self.version:
            return TrustOutcome(refused=self._refuse(
                digest, f"trust list v{doc.version} is not newer than v{self.version} trusted "
                        "here: refused as a replay or downgrade"))
        if doc.version not in self._pending and len(self._pending) >= MAX_PENDING:
            return TrustOutcome(refused=self._refuse(
                digest, f"trust list v{doc.version}: {MAX_PENDING} lists already wait for a "
                        "trusted signer"))
        self._pending[doc.version] = (doc, payload)
        applied, refused = self._advance()
        if doc.version in self._pending:
            log.info("trust list v%d waits: signed by %s, none trusted here yet", doc.version,
                     [s.key_id for s in doc.signatures])
        return TrustOutcome(applied=applied, refused=refused.get(doc.version),
                            waiting=doc.version in self._pending)

    def _advance(self) -> tuple[tuple[int, ...], dict[int, str]]:
        """Apply waiting lists in version order, each checked against the keys trusted then."""
        applied: list[int] = []
        refused: dict[int, str] = {}
        progress = True
        while progress:
            progress = False
            for version in sorted(self._pending):
                doc, payload = self._pending[version]
                if version <= self.version:
                    del self._pending[version]  # overtaken by a newer list
                    self._decide(_digest(version, payload))
                    continue
                if not any(s.key_id in self._trusted for s in doc.signatures):
                    continue  # may become verifiable once an earlier list is applied
                del self._pending[version]
                digest = _digest(version, payload)
                try:
                    parts = trust.signed_parts(doc, self._trusted)
                    results = self._verify(list(parts.values()))
                except SignatureError as exc:
                    refused[version] = self._refuse(digest, f"trust list v{version}: {exc}")
                    continue
                if not all(results):
                    refused[version] = self._refuse(
                        digest, f"trust list v{version}: a signature by a trusted key does not "
                                "verify")
                    continue
                self._apply(doc, payload, persist=True)
                applied.append(version)
                progress = True
                break
        return tuple(applied), refused

    def _apply(self, doc: trust.TrustList, payload: bytes, *, persist: bool) -> None:
        self._chain.append((doc, payload))
        self._trusted = doc.public_keys()
        self._known.update(self._trusted)
        self._decide(_digest(doc.version, payload))
        if persist:
            self._save()
            log.info("trust list v%d applied: keys %s", doc.version, sorted(self._trusted))

    def _save(self) -> None:
        if self._read_only:
            return
        state = {"v": _STATE_VERSION,
                 "chain": [base64.b64encode(p).decode() for _, p in self._chain]}
        try:
            write_atomic(self.path, json.dumps(state).encode())
        except OSError as exc:  # trusted in memory; a restart re-walks the retained lists
            log.error("cannot persist the trust chain to %s: %s", self.path, exc)

    def _refuse(self, digest: str, reason: str) -> str:
        self._decide(digest)
        self.refused += 1
        self.last_error = reason
        log.error("trust list refused: %s", reason)
        return reason

    def _decide(self, digest: str) -> None:
        if len(self._decided) >= _MAX_DECIDED:
            self._decided.clear()  # deciding one again costs a check, never trust
        self._decided.add(digest)


def _digest(version: int, payload: bytes) -> str:
    return f"{version}:{hashlib.sha256(payload).hexdigest()}"
