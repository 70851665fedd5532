"""The hub's signing keys: the one that signs new releases, rotation with an overlap, retirement.

Private keys are PEM files readable by the hub's user only (0600): the first where
``EDGELOOP_SIGNING_KEY_PATH`` says (``<data_dir>/signing-key.pem`` by default), later ones in
``EDGELOOP_SIGNING_KEYS_DIR`` (``<data_dir>/keys/``). They are never logged. Every rotation
and retirement writes a new signed trust list (:mod:`shared.trust`), published retained on
``Topics.trust(version)``:

- ``rotate``: a new key; the list {every key still trusted, new} is signed by all of them, so a
  device that trusts only the old key (or, enrolled meanwhile, only the new one) accepts it. New
  releases are signed by the new key from then on; the old one stays trusted for the overlap.
- ``retire OLD``: the list without OLD, signed by the keys that remain. Refused during the
  overlap unless forced (a compromised key); the private key file is deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.core.states import KeyStatus
from cloud_hub.db.key_tables import SigningKeyRecord, TrustListRecord
from cloud_hub.mqtt.publisher import Publisher
from shared.signing import SignatureError, SigningKey, generate_signing_key, sign_trust_list
from shared.trust import MAX_KEYS, TrustedKey, TrustList, parse_trust_list

__all__ = ["HubKeys", "KeyConflict", "KeyUnavailable"]

log = logging.getLogger(__name__)

ACTIVE, TRUSTED, RETIRED = KeyStatus.ACTIVE, KeyStatus.TRUSTED, KeyStatus.RETIRED


class KeyConflict(RuntimeError):
    """The key operation does not fit the keys' state (409)."""


class KeyUnavailable(RuntimeError):
    """The key that should sign has no private key on this hub."""


class HubKeys:
    def __init__(self, engine: Engine, *, keys_dir: Path, first_key_path: Path) -> None:
        self._engine = engine
        self.keys_dir = keys_dir
        self._first_key_path = first_key_path
        self._lock = threading.RLock()
        self._private: dict[str, SigningKey] = {}
        self._bootstrap()

    def _bootstrap(self) -> None:
        """The first hub on a database makes the first key. Hubs that start together take
        turns here, as through the schema, so that one key is made and recorded, not one each
        (on one key volume, each would have overwritten the file another had recorded)."""
        from cloud_hub.db.migrate import one_at_a_time  # Alembic loads where a schema is made

        with one_at_a_time(self._engine), Session(self._engine) as session:
            if session.exec(select(SigningKeyRecord)).first() is None:
                key = SigningKey.load_or_create(self._first_key_path)
                now = time.time()
                session.add(SigningKeyRecord(key_id=key.key_id, public_key=key.public_b64(),
                                             status=ACTIVE, created_at=now, activated_at=now))
                session.commit()
            wanted = self.trusted_ids(session)
        with self._lock:
            missing = self._load_files(wanted)
        if missing:
            log.warning("no private key on this hub for signing key(s) %s (in %s): releases "
                        "they should sign are refused", sorted(missing), self.keys_dir)

    def _load_files(self, wanted: set[str]) -> set[str]:
        """Load the key files that hold keys of ``wanted`` (a key copied here from another hub
        since this one started, say); returns those still missing. Under ``self._lock``."""
        for path in [self._first_key_path, *sorted(self.keys_dir.glob("*.pem"))]:
            if not path.is_file():
                continue
            try:
                key = SigningKey.load(path)
            except (ValueError, SignatureError, OSError) as exc:
                log.error("signing key file %s is unusable: %s", path, exc)
                continue
            if key.key_id in wanted:
                self._private[key.key_id] = key
        return wanted - set(self._private)

    # -- reading -------------------------------------------------------------------------
    def _active_record(self, session: Session) -> SigningKeyRecord:
        record = session.exec(select(SigningKeyRecord).where(
            SigningKeyRecord.status == ACTIVE).order_by(col(SigningKeyRecord.activated_at))
        ).first()
        if record is None:
            raise KeyUnavailable("no active signing key (every key is retired)")
        return record

    @property
    def active(self) -> SigningKey:
        """The key that signs new releases."""
        with self._lock, Session(self._engine) as session:
            record = self._active_record(session)
            if record.key_id not in self._private:  # copied here since, or made by another hub
                self._load_files({record.key_id})
            key = self._private.get(record.key_id)
        if key is None:
            raise KeyUnavailable(
                f"the active signing key {record.key_id} has no private key on this hub "
                f"(expected {self.keys_dir / (record.key_id + '.pem')}, mode 0600)"
            )
        return key

    def trusted_ids(self, session: Session) -> set[str]:
        return {r.key_id for r in session.exec(select(SigningKeyRecord).where(
            SigningKeyRecord.status != RETIRED))}

    def trust_version(self, session: Session) -> int:
        return int(session.exec(select(func.max(TrustListRecord.version))).one() or 0)

    def view(self, session: Session) -> dict[str, Any]:
        keys = session.exec(select(SigningKeyRecord).order_by(
            col(SigningKeyRecord.created_at))).all()
        lists = session.exec(select(TrustListRecord).order_by(
            col(TrustListRecord.version))).all()
        with self._lock:
            wanted = {k.key_id for k in keys if k.status != RETIRED} - set(self._private)
            if wanted:
                self._load_files(wanted)
        return {
            "active": next((k.key_id for k in keys if k.status == ACTIVE), None),
            "trust_version": max((t.version for t in lists), default=0),
            "keys": [{**k.model_dump(), "private_key_here": k.key_id in self._private}
                     for k in keys],
            "trust_lists": [_list_view(t) for t in lists],
        }

    # -- changing ------------------------------------------------------------------------
    def rotate(self, session: Session, *, overlap_s: float, publisher: Publisher) -> int:
        """A new active key and trust list {kept keys, new}; returns the list's version."""
        with self._lock:
            old = self._active_record(session)
            keep = self._kept(session)
            if len(keep) >= MAX_KEYS:
                raise KeyConflict(f"{len(keep)} keys are trusted, a trust list holds at most "
                                  f"{MAX_KEYS}: retire an old key first")
            signers = self._signers(keep)  # before anything is made: refused, nothing changes
            new = generate_signing_key()
            path = self.keys_dir / f"{new.key_id}.pem"
            new.save(path)
            now = time.time()
            old.status, old.retire_after = TRUSTED, now + overlap_s
            new_record = SigningKeyRecord(key_id=new.key_id, public_key=new.public_b64(),
                                          status=ACTIVE, created_at=now, activated_at=now)
            version = self._record_list(
                session, [*keep, new_record], reason=f"rotate {old.key_id} -> {new.key_id}",
                signers=[*signers, new],
            )
            session.add(old)
            session.add(new_record)
            session.commit()
            self._private[new.key_id] = new
            log.info("signing key rotated: %s -> %s (old one trusted for %.0f s more); trust "
                     "list v%d", old.key_id, new.key_id, overlap_s, version)
        self.publish_trust_lists(session, publisher)
        return version

    def retire(self, session: Session, key_id: str, *, force: bool,
               publisher: Publisher) -> int:
        """Stop trusting ``key_id``: a trust list without it; returns the list's version."""
        with self._lock:
            record = session.get(SigningKeyRecord, key_id)
            if record is None:
                raise LookupError(f"signing key {key_id} does not exist")
            if record.status == RETIRED:
                raise KeyConflict(f"signing key {key_id} is already retired")
            if record.status == ACTIVE:
                raise KeyConflict(f"signing key {key_id} is the active key (it signs new "
                                  "releases); rotate to a new key first")
            now = time.time()
            if record.retire_after is not None and now < record.retire_after and not force:
                raise KeyConflict(
                    f"signing key {key_id} is in its overlap for {record.retire_after - now:.0f} "
                    "s more (devices may not have the new trust list yet); retire it then, or "
                    "force it now (a compromised key)"
                )
            keep = [r for r in self._kept(session) if r.key_id != key_id]
            version = self._record_list(session, keep, reason=f"retire {key_id}",
                                        signers=self._signers(keep))
            record.status, record.retired_at = RETIRED, now
            session.add(record)
            session.commit()
            self._forget_private(key_id)
            log.info("signing key %s retired; trust list v%d", key_id, version)
        self.publish_trust_lists(session, publisher)
        return version

    def _kept(self, session: Session) -> list[SigningKeyRecord]:
        return list(session.exec(select(SigningKeyRecord).where(
            SigningKeyRecord.status != RETIRED).order_by(col(SigningKeyRecord.created_at))))

    def _signers(self, keys: list[SigningKeyRecord]) -> list[SigningKey]:
        """The private keys of ``keys`` on this hub, its key files looked at again for any it
        lacks; KeyUnavailable if none is here. An agent takes a trust list only if a key it
        trusts signed it: one signed by a new key alone would be refused by every device."""
        missing = {r.key_id for r in keys} - set(self._private)
        if missing:
            self._load_files(missing)
        signers = [self._private[r.key_id] for r in keys if r.key_id in self._private]
        if not signers:
            raise KeyUnavailable(
                f"no private key of the trusted keys {sorted(r.key_id for r in keys)} is on "
                f"this hub (in {self.keys_dir}): the devices would refuse a trust list none of "
                "them signed. Copy the active key here, or do this on the hub that has it")
        return signers

    def _record_list(self, session: Session, keys: list[SigningKeyRecord], *, reason: str,
                     signers: list[SigningKey]) -> int:
        version = self.trust_version(session) + 1
        unsigned = TrustList(version=version, created_at=time.time(), keys={
            r.key_id: TrustedKey(public_key=r.public_key, since=r.created_at) for r in keys
        })
        signed = sign_trust_list(unsigned, signers)
        session.add(TrustListRecord(version=version, payload=signed.to_bytes().decode(),
                                    created_at=signed.created_at, reason=reason))
        return version

    def _forget_private(self, key_id: str) -> None:
        key = self._private.pop(key_id, None)
        for path in (self.keys_dir / f"{key_id}.pem", self._first_key_path):
            if key is not None and path.is_file():
                try:
                    if SigningKey.load(path).key_id == key_id:
                        path.unlink()
                except (OSError, ValueError, SignatureError) as exc:
                    log.error("cannot remove the retired key file %s: %s", path, exc)

    def publish_trust_lists(self, session: Session, publisher: Publisher) -> int:
        """(Re)publish every trust list, retained; returns how many."""
        lists = list(session.exec(select(TrustListRecord).order_by(
            col(TrustListRecord.version))))
        if not lists:
            return 0
        publisher.publish_trust_lists([(t.version, t.payload.encode()) for t in lists])
        now = time.time()
        for t in lists:
            if t.published_at is None:
                t.published_at = now
                session.add(t)
        session.commit()
        return len(lists)


def _list_view(record: TrustListRecord) -> dict[str, Any]:
    doc = parse_trust_list(record.payload)
    return {
        "version": record.version, "created_at": record.created_at, "reason": record.reason,
        "published_at": record.published_at, "keys": sorted(doc.keys),
        "signed_by": [s.key_id for s in doc.signatures],
    }

