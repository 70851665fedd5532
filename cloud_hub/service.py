"""The hub as one object: store, signing key, MQTT ingest, publisher, jobs, rollouts,
incidents and their notifications.

``cloud-hub serve`` builds a :class:`Hub` from :class:`Settings`, starts it and serves the REST
API on it; tests and the simulator can do the same in-process.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from cloud_hub.core.config import Settings
from cloud_hub.core.security import Scope, generate_api_key, hash_api_key
from cloud_hub.core.states import KeyStatus
from cloud_hub.db.engine import make_engine
from cloud_hub.db.ingest_store import StoreResult
from cloud_hub.db.tables import ApiKey
from cloud_hub.db.wal import WalCheckpointer
from cloud_hub.drift.loop import RetrainLoop
from cloud_hub.identity.audit import CredentialAuditor
from cloud_hub.identity.enrollment import DeviceEnrollment
from cloud_hub.identity.enrollment_jobs import EnrollmentJobs
from cloud_hub.identity.revocations import RevocationRetry
from cloud_hub.incidents.grouping import GroupingPolicy
from cloud_hub.incidents.job import IncidentTick
from cloud_hub.jobs.leased import LeasedWorker, process_holder_id
from cloud_hub.jobs.training import JobRunner, RunTraining
from cloud_hub.keys.ring import HubKeys, KeyUnavailable
from cloud_hub.maintenance.job import MaintenanceTick
from cloud_hub.maintenance.retention import RetentionPolicy
from cloud_hub.metrics.broker import BrokerStats
from cloud_hub.metrics.exposition import render
from cloud_hub.metrics.fleet import FleetFigures
from cloud_hub.metrics.histogram import HistogramSnapshot
from cloud_hub.metrics.processes import ProcessReporter
from cloud_hub.metrics.resources import process_figures
from cloud_hub.mqtt.acks import AckPublisher
from cloud_hub.mqtt.client import MqttAuth
from cloud_hub.mqtt.connection import HubConnection
from cloud_hub.mqtt.ingest import MqttIngest, subscriptions
from cloud_hub.mqtt.publisher import Publisher
from cloud_hub.notify.sender import DeliveryPolicy, WebhookSender
from cloud_hub.registry.records import register_artifact
from cloud_hub.registry.releases import Releases
from cloud_hub.rollouts.controller import RolloutController
from cloud_hub.rollouts.retained import LEASE as RETAINED_LEASE
from cloud_hub.rollouts.retained import RetainedState
from cloud_hub.training.artifact import ModelArtifact
from shared.signing import SigningKey

__all__ = ["BOOTSTRAP_KEY_NAME", "GENERATED_KEY_NAME", "Hub"]

log = logging.getLogger(__name__)

BOOTSTRAP_KEY_NAME = "bootstrap-admin"  # the key from EDGELOOP_ADMIN_API_KEY
GENERATED_KEY_NAME = "generated-admin"  # made at first start when none is configured


class Hub:
    """Everything ``cloud-hub serve`` runs besides the HTTP server."""

    def __init__(
        self, settings: Settings, *, run_training: RunTraining | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = engine or make_engine(settings.resolved_database_url)
        self.checkpointer = WalCheckpointer(self.engine)
        self.fleet = FleetFigures(self.engine)  # edgeloop_fleet_* in the scrapes
        self.broker_stats = BrokerStats(on_refused=self._grant_broker_figures)
        self.keys = HubKeys(self.engine, keys_dir=settings.resolved_signing_keys_dir,
                            first_key_path=settings.resolved_signing_key_path)
        self.topics = settings.topics
        # One MQTT connection for ingest, acknowledgements and publishing.
        self.mqtt_auth = MqttAuth(
            password=settings.mqtt_password, tls=settings.mqtt_tls,
            ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
        )
        self.mqtt = HubConnection(
            host=settings.mqtt_host, port=settings.mqtt_port, topics=self.topics,
            client_id=settings.mqtt_client_id, keepalive=settings.mqtt_keepalive,
            subscriptions=subscriptions(self.topics, settings.mqtt_share_group or None),
            presence_refresh_s=settings.hub_status_refresh_s, auth=self.mqtt_auth,
            receive_maximum=settings.mqtt_receive_maximum,
            broker_stats=self.broker_stats,
        )
        self.acks = AckPublisher(self.engine, self.mqtt, interval_s=settings.ack_interval_s)
        self.ingest = MqttIngest(
            self.engine, self.mqtt, batch_max=settings.ingest_batch_max,
            batch_max_bytes=settings.ingest_batch_max_bytes,
            batch_wait_s=settings.ingest_batch_wait_s, on_commit=self._on_ingest_commit,
            writers=settings.ingest_writers,
        )
        if settings.ingest_writers > 1 and self.engine.dialect.name == "sqlite":
            log.warning("EDGELOOP_INGEST_WRITERS=%d on SQLite, which takes one writer at a time: "
                        "the writers only wait for each other", settings.ingest_writers)
        self.publisher = Publisher(self.mqtt, timeout=settings.publish_timeout_s)
        # One name for this process in every job lease it takes (the job_leases table, and
        # edgeloop_hub_info in the metrics).
        self.holder = holder = process_holder_id()
        self.jobs = JobRunner(self.engine, register=self._register, run_training=run_training,
                              uploads_dir=settings.data_dir / "uploads",
                              min_agreement=settings.min_parity_agreement,
                              max_readings=settings.training_max_readings, holder=holder)
        self.releases = Releases(self.keys, self.publisher)
        self.retained = RetainedState(self.engine, self.keys, self.publisher, self.mqtt,
                                      holder=holder)
        self.rollouts = RolloutController(
            self.engine, self.releases, tick_s=settings.rollout_tick_s, holder=holder
        )
        self.incident_tick = IncidentTick(
            self.engine, GroupingPolicy(gap_s=settings.incident_gap_s,
                                        quiet_s=settings.incident_quiet_s),
            on_change=lambda _queued: self.notifier.wake(),
        )
        self.incidents = LeasedWorker(self.engine, name="incidents", tick=self.incident_tick,
                                      interval_s=settings.incident_tick_s, holder=holder)
        self.webhooks = WebhookSender(self.engine, DeliveryPolicy(
            timeout_s=settings.webhook_timeout_s, max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s, backoff_max_s=settings.webhook_backoff_max_s))
        self.notifier = LeasedWorker(self.engine, name="notifier", tick=self.webhooks.tick,
                                     interval_s=min(settings.webhook_backoff_s, 1.0),
                                     holder=holder)
        self.enrollment = DeviceEnrollment(settings, self.engine, trust_keys=self._pinned_keys)
        self.enrollment_jobs = EnrollmentJobs(self.enrollment, self.engine, holder=holder)
        self.revocations = RevocationRetry(self.enrollment.delete_revoked)
        self.enrollment.retry = self.revocations
        self.credential_auditor = CredentialAuditor(self.enrollment.audit)
        self.credential_audit = LeasedWorker(
            self.engine, name="broker-audit", tick=self.credential_auditor, holder=holder,
            interval_s=settings.broker_audit_s or 3600.0)
        self.retrain = LeasedWorker(
            self.engine, name="retrain", holder=holder, interval_s=settings.retrain_tick_s,
            tick=RetrainLoop(self.engine, jobs=self.jobs, releases=self.releases,
                             wake_rollouts=self.rollouts.wake),
            defer_while=self.ingest.behind)
        self.maintenance_tick = MaintenanceTick(self.engine, RetentionPolicy(
            raw_days=settings.retention_raw_days, rollup_days=settings.retention_rollup_days,
            dead_letter_days=settings.retention_dead_letter_days,
            jobs_days=settings.retention_jobs_days))
        self.maintenance = LeasedWorker(self.engine, name="maintenance",
                                        tick=self.maintenance_tick,
                                        interval_s=settings.maintenance_tick_s, holder=holder,
                                        busy_share=0.5, defer_while=self.ingest.behind)
        self.processes = ProcessReporter(self.engine, holder=holder,
                                         client_id=settings.mqtt_client_id,
                                         figures=self.metrics, report_s=settings.hub_report_s)
        self.generated_admin_key: str | None = None
        self.started_at: float | None = None

    def _pinned_keys(self) -> dict[str, str]:
        """What a newly enrolled device pins: every key the hub still trusts."""
        with Session(self.engine) as session:
            return {k["key_id"]: k["public_key"] for k in self.keys.view(session)["keys"]
                    if k["status"] != KeyStatus.RETIRED}

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs new releases (it changes when the keys are rotated)."""
        return self.keys.active

    def metrics(self) -> dict[str, Any]:
        """This process's figures (``GET /api/v1/metrics``): each hub process keeps its own,
        so with several hubs each one is asked at its own address."""
        return self._figures()[0]

    def metrics_text(self) -> str:
        """The same figures in the Prometheus text format, with the commit-time histogram and
        the fleet as the database knows it (left out while the database does not answer)."""
        data, commit_seconds = self._figures()
        return render(data, commit_seconds=commit_seconds, fleet=self.fleet.get())

    def _figures(self) -> tuple[dict[str, Any], HistogramSnapshot]:
        data, commit_seconds = self.ingest.figures()
        data.update(self.acks.snapshot())
        data.update(self.retained.snapshot())
        data.update(self.checkpointer.snapshot())
        data.update(self.credential_auditor.snapshot())
        data.update(self.revocations.snapshot())
        data["publisher_connected"] = self.publisher.connected
        data["uptime_s"] = time.time() - self.started_at if self.started_at else 0.0
        data["client_id"] = self.settings.mqtt_client_id
        data["process"] = process_figures()
        data["broker"] = self.broker_stats.snapshot()
        data["lease_holder"] = self.holder
        data["leases"] = {
            "rollouts": self.rollouts.holding, "training": self.jobs.holding,
            RETAINED_LEASE: self.retained.leading,
            **{w.name: w.holding for w in (self.incidents, self.notifier, self.retrain,
                                            self.maintenance, self.credential_audit)},
        }
        return data, commit_seconds

    def _grant_broker_figures(self) -> None:
        """The broker refused the hub its figures: a role made by an earlier version. A hub
        that manages the broker's identities gives its roles what they lack, in the background
        (as ``cloud-hub broker sync-roles`` does), and asks again."""
        if self.enrollment.manages_broker:
            threading.Thread(target=self._sync_roles, name="sync-roles", daemon=True).start()

    def _sync_roles(self) -> None:
        try:
            added = self.enrollment.sync_roles()
        except Exception as exc:  # the broker's answer, or none: the operator can run it
            log.warning("broker: the hub's roles were not brought up to date (%s); "
                        "`cloud-hub broker sync-roles` does it", exc)
            return
        log.warning("broker: added to the hub's roles what this version needs: %s",
                    "; ".join(added) or "nothing (the refusal has another cause)")
        if added:
            self.broker_stats.ask_again()

    def _on_ingest_commit(self, result: StoreResult) -> None:
        self.acks.touched(result.touched)
        # A rollout moves on what devices report (and the canary on its anomalies): wake it
        # for those. Telemetry alone waits for its regular tick (rollout_tick_s), so a flood of
        # telemetry commits does not bring a rollout tick (a lease write) with each one.
        if result.device_states or result.anomalies:
            self.rollouts.wake()
        if result.anomalies:
            self.incidents.wake()
        if result.drift_summaries:
            self.retrain.wake()

    def _register(
        self, session: Session, artifact: ModelArtifact, name: str, training: dict[str, Any],
        job_id: int,
    ) -> tuple[str, int]:
        record = register_artifact(
            session, self._with_parity_floor(artifact), name=name,
            chunk_size=self.settings.chunk_size, training=training, training_job_id=job_id,
        )
        return record.name, record.version

    def _with_parity_floor(self, artifact: ModelArtifact) -> ModelArtifact:
        """The artifact judged by a gate no laxer than the hub's floor, however it was made."""
        floor = self.settings.min_parity_agreement
        if artifact.parity.min_agreement >= floor:
            return artifact
        return replace(artifact, parity=replace(artifact.parity, min_agreement=floor))

    def register(self, artifact: ModelArtifact, *, name: str,
                 training: dict[str, Any] | None = None) -> tuple[str, int]:
        """Register an artifact trained outside a job (e.g. by the simulator)."""
        with Session(self.engine) as session:
            record = register_artifact(
                session, self._with_parity_floor(artifact), name=name,
                chunk_size=self.settings.chunk_size, training=training,
            )
            return record.name, record.version

    def ensure_admin_key(self) -> str | None:
        """Store the bootstrap admin key; generate one when none is configured and none exists.

        A configured key (``EDGELOOP_ADMIN_API_KEY``) replaces the bootstrap key before it: a
        previous configured or generated bootstrap key is revoked, so changing the variable
        and restarting is how the bootstrap key is rotated. A configured key that an admin
        revoked stays revoked. Returns a newly generated key (to be shown once, on the
        terminal, never logged) or None.

        Hubs sharing a database may start together: when another hub stored the same
        configured key between this one's check and its insert, the unique key hash refuses
        the second row, and the check runs again (it then finds the other hub's row).
        """
        try:
            return self._ensure_admin_key_once()
        except IntegrityError:
            log.info("another hub stored the bootstrap admin key first; checking again")
            return self._ensure_admin_key_once()

    def _ensure_admin_key_once(self) -> str | None:
        with Session(self.engine) as session:
            configured = self.settings.admin_api_key
            if configured:
                digest = hash_api_key(configured)
                if session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first() is None:
                    session.add(ApiKey(name=BOOTSTRAP_KEY_NAME, key_hash=digest,
                                       prefix=configured[:8], scope=Scope.ADMIN,
                                       created_at=time.time()))
                for old in session.exec(select(ApiKey).where(
                        col(ApiKey.name).in_((BOOTSTRAP_KEY_NAME, GENERATED_KEY_NAME)),
                        ApiKey.key_hash != digest, ApiKey.revoked_at == None)):  # noqa: E711
                    old.revoked_at = time.time()
                    session.add(old)
                    log.warning("API key id %s (%s) revoked: EDGELOOP_ADMIN_API_KEY changed",
                                old.id, old.name)
                session.commit()
                return None
            has_admin = session.exec(
                select(ApiKey).where(ApiKey.scope == Scope.ADMIN,
                                     ApiKey.revoked_at == None)  # noqa: E711
            ).first()
            if has_admin is not None:
                return None
            key = generate_api_key()
            session.add(ApiKey(name=GENERATED_KEY_NAME, key_hash=hash_api_key(key),
                               prefix=key[:8], scope=Scope.ADMIN, created_at=time.time()))
            session.commit()
            self.generated_admin_key = key
            return key

    def start(self, timeout: float = 10.0) -> None:
        """Start everything; wait up to ``timeout`` for the broker to grant the hub's
        subscriptions. A broker that is down does not stop the hub: it serves its API and
        connects in the background (``/health`` says whether MQTT is up)."""
        self.ensure_admin_key()
        self.checkpointer.start()
        self.ingest.start()
        self.acks.start()
        self.mqtt.start()
        self.jobs.start()
        self.rollouts.start()
        self.incidents.start()
        self.notifier.start()
        self.retrain.start()
        self.maintenance.start()
        self.revocations.start()
        if self.enrollment.manages_broker and self.settings.broker_audit_s > 0:
            self.credential_audit.start()
            self.credential_audit.wake()  # once at start, then every broker_audit_s
        self.started_at = time.time()
        self.processes.start()
        ready = self.mqtt.wait_ready(timeout)
        if ready:  # written before start returns; later sessions by the thread
            self._assert_retained()
        self.retained.start()
        log.info("hub started: mqtt %s:%d (%s), database %s, signing key %s",
                 self.settings.mqtt_host, self.settings.mqtt_port,
                 "subscribed" if ready else "not reachable yet, retrying in the background",
                 self.engine.url.render_as_string(hide_password=True), self._active_key_id())

    def _assert_retained(self) -> None:
        """The retained records again, in case the broker lost them (a database error is
        logged, and the thread tries again)."""
        try:
            self.retained.catch_up()
        except Exception:
            log.exception("retained records not written again at start-up")

    def _active_key_id(self) -> str:
        try:
            return self.keys.active.key_id
        except KeyUnavailable as exc:
            return f"unavailable ({exc})"

    def stop(self, timeout: float = 10.0, *, announce: bool = True) -> None:
        """Stop everything; ``announce=False`` leaves the hub's presence record alone (another
        hub holds this client id now)."""
        if self.started_at is None:
            return
        self.started_at = None
        self.retrain.stop(timeout)
        self.maintenance.stop(timeout)
        self.notifier.stop(timeout)
        self.incidents.stop(timeout)
        self.credential_audit.stop(timeout)
        self.revocations.stop(timeout)
        self.webhooks.close()
        self.rollouts.stop(timeout)
        self.retained.stop(timeout)
        self.jobs.stop(timeout)
        self.ingest.stop(timeout)
        self.acks.stop(timeout)
        self.mqtt.stop(timeout, announce=announce)
        self.processes.stop(timeout)  # after ingest: its last figures
        self.checkpointer.stop(timeout)
        self.enrollment.close()
        self.engine.dispose()

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
