"""The hub's settings, read from ``EDGELOOP_*`` environment variables (never at import time)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topics import Topics

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the hub process needs; ``Settings()`` reads the environment.

    Give every setting a ``description``: ``cloud-hub serve --help`` and the README's table
    are generated from them (:mod:`cloud_hub.core.settings_doc`).
    """

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore")

    data_dir: Path = Field(default=Path("./hub-data"),
                           description="SQLite database and signing keys (relative: to the cwd)")
    database_url: str | None = Field(
        default=None, json_schema_extra={"secret": True},
        description="any SQLAlchemy URL; default sqlite:///DATA_DIR/hub.db",
    )
    mqtt_host: str = Field(default="127.0.0.1", description="the MQTT broker's host")
    mqtt_port: int = Field(default=1883, ge=1, le=65535, description="the MQTT broker's port")
    mqtt_client_id: str = Field(default="edgeloop-hub", pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                description="the hub's MQTT client id and username, one running "
                                            "hub per id (<id>-admin: its broker admin)")
    mqtt_keepalive: int = Field(default=30, ge=5, description="MQTT keep-alive in seconds")
    # Empty: one hub, plain subscriptions in a persistent session, which mosquitto 2.0 restores
    # after a broker restart. A group name (e.g. "hub"): several hub processes split the load
    # with $share/<group>/..., which mosquitto 2.0 does not restore from its persistence; the
    # agents send again what the hubs' acknowledgements show missing.
    mqtt_share_group: str = Field(
        default="", pattern=r"^[A-Za-z0-9._-]{0,64}$",
        description="empty: one hub; a name: hub processes split ingest with $share/NAME/...",
    )
    topic_prefix: str = Field(default="edgeloop/v1",
                              description="MQTT topic prefix; the agents' mqtt.topic_prefix")
    # The broker's security. The hub's MQTT username is the client id of each connection
    # (<id> for ingest and publishing, <id>-admin for device credentials), both with
    # this password. Unset: taken from DATA_DIR/broker/hub.json (`cloud-hub broker init`).
    mqtt_password: str | None = Field(
        default=None, json_schema_extra={"secret": True},
        description="the hub's MQTT password; default from DATA_DIR/broker/hub.json")
    mqtt_tls: bool = Field(default=False, description="TLS to the broker (set by hub.json)")
    mqtt_ca_file: Path | None = Field(
        default=None, description="CA of the broker's certificate; unset: the system CAs")
    mqtt_dynsec: bool = Field(
        default=True,
        description="the hub creates and deletes device credentials on the broker "
                    "(dynamic-security plugin); false: the operator manages them")
    signing_key_path: Path | None = Field(
        default=None, description="Ed25519 key signing models; default DATA_DIR/signing-key.pem"
    )
    signing_keys_dir: Path | None = Field(
        default=None, description="where rotated signing keys are kept; default DATA_DIR/keys. "
                                  "Hubs sharing a database: this and SIGNING_KEY_PATH on one "
                                  "volume they all mount")
    admin_api_key: str | None = Field(
        default=None, min_length=16, json_schema_extra={"secret": True},
        description="bootstrap admin API key, 16+ characters; unset: one is generated and shown",
    )
    http_host: str = Field(default="127.0.0.1", description="address the REST API listens on")
    http_port: int = Field(default=8080, ge=0, le=65535,
                           description="port of the REST API (0: any free port)")
    # One transaction's statements cost per device and per stream, not per message: with 1,000
    # devices a batch of 2,000 touches each about twice, one of 4,000 four times. bench/ingest.py
    # on PostgreSQL, batch 10: 7,494 msg/s at 500 (receive maximum 4,000), 10,621 at 2,000;
    # later, on a slower machine, 9,633-9,913 at 2,000 and 12,221-12,691 at 4,000 (8,000).
    ingest_batch_max: int = Field(default=4000, ge=1,
                                  description="messages one ingest transaction may hold")
    # Large messages need no large batches (their per-device share is small already): at 100
    # readings a message, 4,000 of them stored no faster than 2,000 and held 150 MB more.
    ingest_batch_max_bytes: int = Field(
        default=32 * 1024 * 1024, ge=64 * 1024,
        description="payload bytes one ingest transaction may hold (a bigger message alone)")
    mqtt_receive_maximum: int = Field(
        default=8000, ge=1, le=65535,
        description="QoS 1 messages the broker may have unacknowledged at the hub (MQTT 5 "
                    "Receive Maximum); at least INGEST_BATCH_MAX, or batches never fill")
    ingest_batch_wait_s: float = Field(default=0.05, gt=0,
                                       description="longest wait to fill an ingest batch")
    # Transactions in flight, each on its own connection (cloud_hub/mqtt/ingest.py). Measured on
    # PostgreSQL (docs/ingest-measurements.md): one hub with 2 stored 3-18% more per second for more
    # CPU per message, and two hubs with 2 each stored 27% less than with 1 each (PostgreSQL's own
    # CPU per message grew by half). SQLite takes one writer at a time.
    ingest_writers: int = Field(
        default=1, ge=1, le=8,
        description="ingest transactions in flight, each on its own database connection "
                    "(PostgreSQL; 1 when several hubs share the database)")
    publish_timeout_s: float = Field(default=30.0, gt=0,
                                     description="wait for the broker to take a model's chunks")
    ack_interval_s: float = Field(default=1.0, gt=0, le=60,
                                  description="at most one delivery acknowledgement per device "
                                              "per this many seconds")
    hub_status_refresh_s: float = Field(default=30.0, gt=0, le=3600,
                                        description="how often the hub refreshes its retained "
                                                    "presence record")
    chunk_size: int = Field(default=64 * 1024, ge=1024, description="model chunk size in bytes")
    rollout_tick_s: float = Field(default=0.5, gt=0,
                                  description="how often the rollout controller looks again")
    # REST request bodies: refused with 413 above this, before parsing or the key check; the CSV
    # training upload (POST /api/v1/training-jobs/csv) has its own, larger limit.
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024,
                                   description="REST request bodies above this get 413")
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024,
                                  description="the CSV training upload's own limit")
    # Incidents: an event within incident_gap_s (device time) of its device's unresolved
    # incident joins it; an incident with no event stored for incident_quiet_s is resolved.
    incident_gap_s: float = Field(
        default=60.0, gt=0,
        description="an anomaly within this many seconds of its device's incident joins it")
    incident_quiet_s: float = Field(
        default=300.0, gt=0, description="an incident with no new event for this long resolves")
    incident_tick_s: float = Field(default=1.0, gt=0,
                                   description="how often the incident job looks again")
    webhook_timeout_s: float = Field(default=5.0, gt=0,
                                     description="time-out of one webhook delivery attempt")
    webhook_max_attempts: int = Field(default=8, ge=1,
                                      description="attempts before a delivery is failed")
    webhook_backoff_s: float = Field(
        default=2.0, gt=0, description="wait after the first failed attempt, doubled each time")
    webhook_backoff_max_s: float = Field(default=600.0, gt=0,
                                         description="longest wait between two attempts")
    ui_session_ttl_s: float = Field(default=12 * 3600.0, gt=0,
                                    description="a console login lasts this long")
    # The parity gate's floor: a training request may ask for a stricter gate, never a laxer one.
    min_parity_agreement: float = Field(
        default=0.99, ge=0.5, le=1.0,
        description="lowest decision agreement a quantized model may pass the gate with")
    training_max_readings: int = Field(
        default=2_000_000, ge=1000,
        description="readings (rows) one training job may load, stored or uploaded")
    retrain_tick_s: float = Field(
        default=2.0, gt=0, description="how often the retraining loop (drift policies) looks again")
    retention_raw_days: float = Field(
        default=30.0, gt=0,
        description="raw telemetry is kept this many days (then only its rollups, once folded)")
    retention_rollup_days: float = Field(
        default=400.0, gt=0, description="1-minute and 1-hour telemetry rollups are kept this long")
    retention_dead_letter_days: float = Field(
        default=30.0, gt=0, description="dead letters are kept this many days")
    retention_jobs_days: float = Field(
        default=90.0, gt=0, description="finished training jobs are kept this many days")
    maintenance_tick_s: float = Field(
        default=10.0, gt=0, description="how often rollups and retention run (in one hub process)")
    broker_audit_s: float = Field(
        default=300.0, ge=0,
        description="how often the broker's device credentials are checked against the "
                    "registry (in one hub process; 0: never)")
    hub_report_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="how often this process writes its row of GET /api/v1/hubs (it is shown "
                    "silent after three missed reports)")

    @field_validator("topic_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        Topics(value)  # raises TopicError naming the prefix
        return value

    @model_validator(mode="after")
    def _window_holds_a_batch(self) -> Settings:
        if self.mqtt_receive_maximum < self.ingest_batch_max:
            raise ValueError(
                f"EDGELOOP_MQTT_RECEIVE_MAXIMUM ({self.mqtt_receive_maximum}) is below "
                f"EDGELOOP_INGEST_BATCH_MAX ({self.ingest_batch_max}): the broker would never "
                "send the hub a full batch, so every batch would wait "
                "EDGELOOP_INGEST_BATCH_WAIT_S; raise the receive maximum (twice the batch keeps "
                "the next batch arriving while one is stored)")
        return self

    @model_validator(mode="after")
    def _broker_files(self) -> Settings:
        """Fill the MQTT security settings from what `cloud-hub broker init` wrote, unless
        they were given."""
        path = self.broker_dir / "hub.json"
        if self.mqtt_password is not None or not path.exists():
            return self
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read the hub's broker credentials: {exc}") from exc
        given = self.model_fields_set
        self.mqtt_password = str(saved["password"])
        if "mqtt_tls" not in given:
            self.mqtt_tls = bool(saved.get("tls", True))
        if "mqtt_ca_file" not in given and saved.get("ca_file"):
            self.mqtt_ca_file = self.broker_dir / str(saved["ca_file"])
        if "mqtt_port" not in given and saved.get("port"):
            self.mqtt_port = int(saved["port"])
        if "mqtt_client_id" not in given and saved.get("client_id"):
            self.mqtt_client_id = str(saved["client_id"])
        return self

    @property
    def broker_dir(self) -> Path:
        """Where `cloud-hub broker init` writes the broker's CA, certificate and identities."""
        return self.data_dir / "broker"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'hub.db'}"

    @property
    def resolved_signing_key_path(self) -> Path:
        return self.signing_key_path or self.data_dir / "signing-key.pem"

    @property
    def resolved_signing_keys_dir(self) -> Path:
        return self.signing_keys_dir or self.data_dir / "keys"

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)
