"""Signed releases: the only place a manifest gets a signature, and its release counter.

Every signed release of a model name takes the next number of that name's counter
(``model_releases``). Publishing a version that passed the parity gate is its first release. A
version the hub sends devices back to (a rollout's rollback, ``models rollback``, or ``desired``
set to it while a newer release of the name exists) is released again with a new, higher
number: the agents refuse any manifest older than the release they installed, so only the hub
can move them back, never a replayed retained manifest.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import func
from sqlmodel import Session, col, select

from cloud_hub.core.states import ModelStatus
from cloud_hub.db.leases import confirm_lease
from cloud_hub.db.registry_tables import ModelRelease, ModelVersion
from cloud_hub.keys.ring import HubKeys
from cloud_hub.mqtt.publisher import Publisher
from cloud_hub.registry.lifecycle import PublishRefused
from cloud_hub.registry.records import sign_release, sign_variant, variants_of
from shared.manifest import Manifest, manifest_from_dict
from shared.signing import SigningKey

__all__ = ["Releases"]

log = logging.getLogger(__name__)


class Releases:
    def __init__(self, keys: HubKeys, publisher: Publisher) -> None:
        self.keys = keys
        self.publisher = publisher
        self._lock = threading.Lock()  # one release at a time: numbers never collide

    def latest(self, session: Session, name: str) -> int:
        """The highest release of ``name`` so far (0: never released)."""
        return int(session.exec(
            select(func.max(ModelRelease.release)).where(ModelRelease.name == name)
        ).one() or 0)

    def release(self, session: Session, record: ModelVersion, *, reason: str) -> ModelVersion:
        """Sign ``record`` as the next release of its name with the active key, publish its
        manifest and chunks (retained), record it; commits. Refused for a model that did not
        pass the parity gate."""
        if not record.parity_passed:
            parity = record.parity
            raise PublishRefused(
                record.parity_failure or "parity gate failed",
                {"figure": "decision_agreement", "value": parity.get("decision_agreement"),
                 "minimum": parity.get("min_agreement"), "quantization": record.quantization},
            )
        with self._lock:
            number = self.latest(session, record.name) + 1
            key = self.keys.active
            manifest = self._sign_and_publish(session, record, release=number, key=key)
            # (published before the commit: a failed publish leaves nothing recorded, and the
            # number is taken again next time)
            now = time.time()
            session.add(ModelRelease(name=record.name, release=number, version=record.version,
                                     key_id=key.key_id, created_at=now, reason=reason))
            record.manifest = manifest.to_dict()
            record.key_id = key.key_id
            if record.status != ModelStatus.PUBLISHED:
                record.status = ModelStatus.PUBLISHED
                record.published_at = now
                record.retired_at = None
            session.add(record)
            session.commit()
            session.refresh(record)
        log.info("released %s v%d as release %d (%s), signed by %s", record.name,
                 record.version, number, reason, key.key_id)
        return record

    def _sign_and_publish(self, session: Session, record: ModelVersion, *, release: int,
                          key: SigningKey) -> Manifest:
        """Sign the version and each of its variants as ``release``, publish them (retained),
        and keep the variants' signed manifests in their rows; the version's own manifest is
        returned for the caller to record. Variants go first: a device sent a variant finds it
        once the version is announced. A leased job's session confirms its lease first."""
        confirm_lease(session)
        for variant in variants_of(session, record):
            signed = sign_variant(variant, release=release, key=key)
            self.publisher.publish_model(signed, variant.tflite, as_variant=True)
            variant.manifest = signed.to_dict()
            session.add(variant)
        manifest = sign_release(record, release=release, key=key)
        self.publisher.publish_model(manifest, record.tflite)
        return manifest

    def current_release(self, record: ModelVersion) -> int | None:
        release = record.manifest.get("release")
        return int(release) if release and record.key_id else None

    def ensure_latest(self, session: Session, record: ModelVersion, *,
                      reason: str) -> ModelVersion:
        """Release ``record`` again unless its release is the newest of its name, is published,
        and is signed by a key the devices still trust. Devices are sent only to such one."""
        current = self.current_release(record)
        if (current is not None and record.status == ModelStatus.PUBLISHED
                and current == self.latest(session, record.name)
                and record.key_id in self.keys.trusted_ids(session)):
            return record
        return self.release(session, record, reason=reason)

    def publish(self, session: Session, record: ModelVersion) -> ModelVersion:
        """Make a version available: its first release, or its current release again."""
        if record.status == ModelStatus.RETIRED:
            raise PublishRefused(
                f"model {record.name} v{record.version} is retired; register a new version"
            )
        current = self.current_release(record)
        if (current is None or record.status != ModelStatus.PUBLISHED
                or record.key_id not in self.keys.trusted_ids(session)):
            return self.release(session, record, reason="publish")
        confirm_lease(session)
        for variant in variants_of(session, record):
            self.publisher.publish_model(manifest_from_dict(variant.manifest), variant.tflite,
                                         as_variant=True)
        self.publisher.publish_model(manifest_from_dict(record.manifest), record.tflite)
        return record

    def resign_published(self, session: Session, retired_key_id: str) -> list[tuple[str, int]]:
        """Sign again, with the active key and the same release number, every published
        version whose manifest a retired key signed (devices no longer trust that key)."""
        done = []
        stale = session.exec(select(ModelVersion).where(
            ModelVersion.status == ModelStatus.PUBLISHED, ModelVersion.key_id == retired_key_id)
            .order_by(col(ModelVersion.name), col(ModelVersion.version))).all()
        for record in stale:
            number = self.current_release(record)
            if number is None:
                continue
            with self._lock:
                key = self.keys.active
                manifest = self._sign_and_publish(session, record, release=number, key=key)
                record.manifest, record.key_id = manifest.to_dict(), key.key_id
                session.add(record)
                row = session.exec(select(ModelRelease).where(
                    ModelRelease.name == record.name, ModelRelease.release == number)).first()
                if row is not None:
                    row.key_id = key.key_id
                    row.reason = f"{row.reason}; re-signed after retiring {retired_key_id}"
                    session.add(row)
                session.commit()
            done.append((record.name, record.version))
        if done:
            log.info("re-signed %d published version(s) after retiring key %s", len(done),
                     retired_key_id)
        return done
