"""The agent's configuration: one TOML file, validated strictly, errors that name the key.

``load_config(path)`` reads the file; ``AgentConfig.model_validate(dict)`` builds the same thing
in-process (the simulator does this). Unknown keys are refused (``extra="forbid"``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.topics import DEFAULT_PREFIX, TopicError, Topics, validate_device_id

__all__ = [
    "AgentConfig",
    "ConfigError",
    "DaemonSettings",
    "HeartbeatSettings",
    "LogSettings",
    "ModelSettings",
    "MqttSettings",
    "OutboxSettings",
    "SourceSettings",
    "TelemetrySettings",
    "TrustSettings",
    "describe_validation_error",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration that cannot be used; the text names the file, the key and the value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive: int = Field(default=30, ge=5, le=3600)
    topic_prefix: str = DEFAULT_PREFIX
    username: str | None = None  # defaults to device_id
    password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None  # CA bundle; system CAs when unset
    session_expiry_s: int = Field(default=7 * 86400, ge=0)
    reconnect_initial_s: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=86400)

    @field_validator("topic_prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str) -> str:
        try:
            Topics(prefix)
        except TopicError as exc:
            raise ValueError(str(exc)) from None
        return prefix

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttSettings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"reconnect_max_s {self.reconnect_max_s} is below reconnect_initial_s "
                f"{self.reconnect_initial_s}"
            )
        return self


class TrustSettings(_Section):
    # key_id -> base64 of the 32 raw Ed25519 public key bytes (or PEM text)
    keys: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_match_their_ids(self) -> TrustSettings:
        # Imported here: cryptography is only needed once keys are actually checked.
        from shared.signing import SignatureError, key_id_of, load_public_key

        for key_id, text in self.keys.items():
            try:
                actual = key_id_of(load_public_key(text))
            except SignatureError as exc:
                raise ValueError(f"keys.{key_id}: {exc}") from None
            if actual != key_id:
                raise ValueError(
                    f"keys.{key_id}: the public key's id is {actual!r}, not {key_id!r}"
                )
        return self


class SourceSettings(_Section):
    type: str = "stdin"  # csv | stdin | mqtt | an "edgeloop.sources" entry point name
    options: dict[str, Any] = Field(default_factory=dict)


class TelemetrySettings(_Section):
    batch_max_readings: int = Field(default=100, ge=1, le=10_000)
    batch_max_age_s: float = Field(default=1.0, gt=0, le=3600)


class OutboxSettings(_Section):
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    max_age_s: float = Field(default=7 * 86400, gt=0)  # telemetry older than this is dropped
    anomaly_max_age_s: float = Field(default=30 * 86400, gt=0)  # anomalies are kept longest
    max_inflight: int = Field(default=100, ge=1, le=10_000)
    # Acknowledged messages are kept this long, to be sent again when a hub comes back from an
    # outage (a new hub session): the broker may have acknowledged them with no hub listening.
    resend_window_s: float = Field(default=300.0, ge=0, le=86400)  # 0: never resend
    # ... and those acknowledged up to this long before the outage began
    resend_margin_s: float = Field(default=10.0, ge=0, le=3600)
    synchronous: Literal["full", "normal"] = "full"  # full: survives power loss, not only kill


class ModelSettings(_Section):
    shadow_windows: int = Field(default=20, ge=0)  # 0: activate without a shadow run
    max_shadow_anomaly_rate: float = Field(default=0.5, ge=0, le=1)
    download_timeout_s: float = Field(default=120.0, gt=0)
    chunk_retries: int = Field(default=3, ge=0)
    realert_windows: int = Field(default=0, ge=0)  # 0: the model's window length
    calibration_windows: int = Field(default=0, ge=0)  # 0: keep the manifest's threshold
    calibration_quantile: float = Field(default=0.999, gt=0, lt=1)
    calibration_factor: float = Field(default=1.0, gt=0)
    num_threads: int = Field(default=1, ge=1, le=64)


class HeartbeatSettings(_Section):
    interval_s: float = Field(default=30.0, gt=0)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(default=False, alias="json")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, level: Any) -> Any:
        return level.upper() if isinstance(level, str) else level


class DaemonSettings(_Section):
    grace_s: float = Field(default=10.0, ge=0, le=600)  # flush time on SIGTERM/SIGINT


class AgentConfig(_Section):
    device_id: str
    state_dir: Path = Path("./agent-state")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)

    @field_validator("device_id")
    @classmethod
    def _valid_device_id(cls, device_id: str) -> str:
        try:
            return validate_device_id(device_id)
        except TopicError as exc:
            raise ValueError(str(exc)) from None

    @property
    def username(self) -> str:
        return self.mqtt.username or self.device_id

    def topics(self) -> Topics:
        return Topics(self.mqtt.topic_prefix)


def describe_validation_error(exc: ValidationError, where: str = "config") -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "{…}" if isinstance(value, dict) else repr(value)[:80]
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            parts.append(f"{where}: key {key!r} is required")
        elif err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key {key!r}")
        else:
            parts.append(f"{where}: key {key!r}: {message} (got {shown})")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more error(s)")
    return "; ".join(parts)


def load_config(path: Path | str) -> AgentConfig:
    """Read and validate an agent TOML file; a relative ``state_dir`` is relative to the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(path))) from None
    if not config.state_dir.is_absolute() and "state_dir" in raw:
        config = config.model_copy(update={"state_dir": path.parent / config.state_dir})
    return config
