"""The hub's settings, read from ``EDGELOOP_*`` environment variables (never at import time)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topics import Topics

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the hub process needs; ``Settings()`` reads the environment."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore")

    data_dir: Path = Path("./hub-data")
    database_url: str | None = Field(
        default=None, description="any SQLAlchemy URL; default sqlite:///<data_dir>/hub.db"
    )
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_client_id: str = Field(default="edgeloop-hub", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    mqtt_keepalive: int = Field(default=30, ge=5)
    # Empty: one hub, plain subscriptions in a persistent session, which mosquitto 2.0 restores
    # after a broker restart. A group name (e.g. "hub"): several hub processes split the load
    # with $share/<group>/..., which mosquitto 2.0 does not restore from its persistence; the
    # agents' resend to a new hub session (HubStatus) covers what reached nobody meanwhile.
    mqtt_share_group: str = Field(default="", pattern=r"^[A-Za-z0-9._-]{0,64}$")
    topic_prefix: str = "edgeloop/v1"
    signing_key_path: Path | None = None
    admin_api_key: str | None = Field(default=None, min_length=16)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # Ingest: how many messages one transaction may hold, and how long a batch may wait.
    ingest_batch_max: int = Field(default=500, ge=1)
    ingest_batch_wait_s: float = Field(default=0.05, gt=0)
    publish_timeout_s: float = Field(default=30.0, gt=0)
    chunk_size: int = Field(default=64 * 1024, ge=1024)
    # Rollout controller tick and the "online" window for devices without a status record.
    rollout_tick_s: float = Field(default=0.5, gt=0)
    # REST request bodies: refused with 413 above this, before parsing or the key check; the CSV
    # training upload (POST /api/v1/training-jobs/csv) has its own, larger limit.
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    @field_validator("topic_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        Topics(value)  # raises TopicError naming the prefix
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'hub.db'}"

    @property
    def resolved_signing_key_path(self) -> Path:
        return self.signing_key_path or self.data_dir / "signing-key.pem"

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)
