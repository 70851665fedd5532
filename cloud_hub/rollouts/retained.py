"""The hub's retained records, asserted again each time its MQTT session is born.

The broker keeps the retained records the hub wrote (trust lists, the manifests and chunks of
published versions, each device's ``desired``) in memory, and on disk only at its periodic save
(``autosave_interval`` in mosquitto.conf). A broker that crashes, or whose disk is lost, comes
back without what it received since: a device that connects then finds no ``desired``, or a
``desired`` naming a version whose manifest is gone. The database holds all of it, so each
time the hub's subscriptions are granted (at start-up and after every reconnect: the hub
cannot tell a network blip from a broker that lost its state), :class:`RetainedState` writes
every record again from the database, exactly as it was:

- the trust lists, in version order;
- every published version's variants, chunks before manifests, then the version's own;
- every device's ``desired``, with the model, variant, config and ``issued_at`` it was sent
  with (its ``rollout_id`` while that rollout runs; agents do not read it): an agent that
  already decided that very request does nothing but report its state again, so sending it
  again never restarts a download or a failed update.

A ``desired`` is written under :func:`~cloud_hub.rollouts.desired.desired_writes`, which
``set_desired`` holds from its publish to its commit: this can never put back an older record
over one that a rollout or an admin just sent.

The trust lists and the models are few, and every hub process writes them at each of its
births. The ``desired`` records are one per device: with several hub processes on one broker,
only the one holding the ``retained-desired`` lease writes them, at each of its births and
whenever it takes the lease over (the broker may have lost them while no process held it).
A broker that lost its state ends every hub's session, the holder's too, so one process
writing the fleet's records is enough, and a fleet of N devices costs N publishes per broker
loss, not N per hub process. A process that stops cleanly gives the lease up.

Unlike the jobs' leases (:mod:`cloud_hub.db.leases`), this one fences nothing, on purpose: it
writes nothing to the database, and what it publishes is the database's own state, read and
sent under :func:`desired_writes`. A holder that stalled and publishes after another took the
lease over sends the same records again, or records that a writer committed since then replaces
(which waited on the same lock), never an older one over a newer: harmless when repeated.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.core.states import ModelStatus
from cloud_hub.db.leases import Lease
from cloud_hub.db.registry_tables import ModelVersion
from cloud_hub.db.tables import Device
from cloud_hub.jobs.leased import process_holder_id
from cloud_hub.keys.ring import HubKeys
from cloud_hub.mqtt.connection import HubConnection, PublishError
from cloud_hub.mqtt.publisher import Publisher
from cloud_hub.registry.records import variants_of
from cloud_hub.rollouts.desired import desired_writes, running_rollouts
from shared.manifest import manifest_from_dict
from shared.messages import Desired, ModelRef

__all__ = ["Asserted", "RetainedState"]

log = logging.getLogger(__name__)

_DESIRED_PER_PUBLISH = 500  # desired records per publish_all (each waits for its PUBACKs)
LEASE = "retained-desired"


@dataclass(frozen=True)
class Asserted:
    """What one round wrote again."""

    trust_lists: int
    models: int
    desired: int
    seconds: float
    at: float


class RetainedState:
    """Writes the hub's retained records again after each birth of its MQTT session."""

    def __init__(self, engine: Engine, keys: HubKeys, publisher: Publisher,
                 connection: HubConnection, *, poll_s: float = 0.2, lease_ttl_s: float = 30.0,
                 holder: str | None = None) -> None:
        self._engine = engine
        self._keys = keys
        self._publisher = publisher
        self._connection = connection
        self._poll_s = poll_s
        # Its holder writes the desired records.
        self._lease = Lease(engine, name=LEASE, holder=holder or process_holder_id(),
                            ttl_s=lease_ttl_s)
        self._owed_desired = False  # took the lease over and has not written them since
        self._births_done = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: Asserted | None = None
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retained-state", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._lease.release()

    @property
    def leading(self) -> bool:
        """Holds the lease: writes the desired records."""
        return self._lease.held

    def snapshot(self) -> dict[str, object]:
        """For the metrics: when the records were last written again, how many, failures."""
        last = self.last
        return {"retained_asserted_at": last.at if last else None,
                "retained_asserted_desired": last.desired if last else 0,
                "retained_asserted_models": last.models if last else 0,
                "retained_assert_failures": self.failures,
                "retained_desired_lease": self.leading}

    def _lead(self) -> None:
        """Take or renew the lease; taking it over owes the desired records."""
        if self._lease.keep() and self._lease.taken_over:
            self._owed_desired = True

    def catch_up(self) -> Asserted | None:
        """Assert the records again if the session was born since the last round, or the
        desired records if this process just took the lease over (called by the thread, and
        by the hub's start so that it returns with the records written)."""
        self._lead()
        births = self._connection.births
        if births <= self._births_done and not self._owed_desired:
            return None
        if not self._connection.connected:
            return None  # written once the session is born again
        try:
            done = self.assert_all(desired=self.leading)
        except PublishError as exc:  # the connection went again: the next birth retries
            self.failures += 1
            log.warning("retained records not all written again (%s); retried once the hub "
                        "is connected again", exc)
            return None
        self._births_done = births
        if self.leading:
            self._owed_desired = False
        return done

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.catch_up()
            except Exception:  # a database error must not end the thread
                self.failures += 1
                self._lease.lost()  # renew first next time
                log.exception("retained records not written again; retrying")
                self._stop.wait(5.0)

    def assert_all(self, *, desired: bool = True) -> Asserted:
        """Write the retained records the hub owns again, from the database: the trust lists
        and the published versions, and the devices' desired records if ``desired``."""
        started = time.monotonic()
        with Session(self._engine) as session:
            trust = self._keys.publish_trust_lists(session, self._publisher)
            models = self._models(session)
            written = self._desired(session) if desired else 0
        done = Asserted(trust_lists=trust, models=models, desired=written,
                        seconds=time.monotonic() - started, at=time.time())
        self.last = done
        log.info("retained records written again: %d trust lists, %d published versions, "
                 "%d desired%s, in %.2f s", trust, models, written,
                 "" if desired else f" (another process holds the {LEASE} lease)",
                 done.seconds)
        return done

    def _models(self, session: Session) -> int:
        published = session.exec(select(ModelVersion).where(
            ModelVersion.status == ModelStatus.PUBLISHED)
            .order_by(col(ModelVersion.name), col(ModelVersion.version))).all()
        for record in published:
            for variant in variants_of(session, record):
                self._publisher.publish_model(manifest_from_dict(variant.manifest),
                                              variant.tflite, as_variant=True)
            self._publisher.publish_model(manifest_from_dict(record.manifest), record.tflite)
        return len(published)

    def _desired(self, session: Session) -> int:
        sent = 0
        with desired_writes(session):
            devices = session.exec(select(Device).where(col(Device.desired_at).is_not(None))
                                   .order_by(col(Device.device_id))).all()
            published = {(n, v): q for n, v, q in session.exec(  # not the blobs
                select(ModelVersion.name, ModelVersion.version, ModelVersion.quantization))}
            rollouts = running_rollouts(session, devices)
            messages = [_desired_of(d, published, rollouts.get(d.device_id)) for d in devices]
            for i in range(0, len(messages), _DESIRED_PER_PUBLISH):
                part = messages[i:i + _DESIRED_PER_PUBLISH]
                self._publisher.publish_desired_many(part)
                sent += len(part)
            session.rollback()  # ends the transaction, and so the lock
        return sent


def _desired_of(device: Device, published: dict[tuple[str, int], str],
                rollout_id: int | None) -> Desired:
    """The ``desired`` ``set_desired`` sent this device, rebuilt from its row."""
    assert device.desired_at is not None
    model = None
    if device.desired_name is not None and device.desired_version is not None:
        variant = device.desired_variant
        if variant == published.get((device.desired_name, device.desired_version)):
            variant = None  # the published variant is sent without a name
        model = ModelRef(name=device.desired_name, version=device.desired_version,
                         variant=variant)
    return Desired(device_id=device.device_id, config=dict(device.desired_config or {}),
                   issued_at=device.desired_at, rollout_id=rollout_id,
                   model=model)
