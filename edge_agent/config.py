"""The agent's configuration: one TOML file, validated strictly, errors that name the key.

``load_config(path)`` reads the file; ``config_from_dict(dict)`` builds the same thing in-process
(the simulator does this). Unknown keys are refused, every value is checked against its type and
range, and the error names the key (``mqtt.port``) and the value that was given.

msgspec rather than pydantic, like :mod:`shared.messages`: pydantic would cost the running agent
about 15 MB of its 60 MB budget.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from edge_agent.detect.adaptation import AdaptationSettings
from edge_agent.drift.federated import FederatedSettings
from edge_agent.drift.monitor import DriftSettings
from shared.keys import SignatureError, key_id_of_raw, public_key_bytes
from shared.messages import AgentRuntime
from shared.topics import DEFAULT_PREFIX, TopicError, Topics, validate_device_id

__all__ = [
    "AdaptationSettings",
    "AgentConfig",
    "ConfigError",
    "DaemonSettings",
    "DriftSettings",
    "FederatedSettings",
    "HeartbeatSettings",
    "LogSettings",
    "ModelSettings",
    "MqttSettings",
    "OutboxSettings",
    "SourceSettings",
    "TelemetrySettings",
    "TrustSettings",
    "config_from_dict",
    "load_config",
]

_MAX = 1.7976931348623157e308


PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=_MAX)]


class ConfigError(ValueError):
    """A configuration that cannot be used; the text names the file, the key and the value."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    def replace(self, **changes: Any) -> Any:
        return msgspec.structs.replace(self, **changes)


class MqttSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    keepalive: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    topic_prefix: str = DEFAULT_PREFIX
    username: str | None = None  # defaults to device_id
    password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None  # CA bundle; system CAs when unset
    session_expiry_s: Annotated[int, msgspec.Meta(ge=0)] = 7 * 86400
    reconnect_initial_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    reconnect_max_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0

    def __post_init__(self) -> None:
        try:
            Topics(self.topic_prefix)
        except TopicError as exc:
            raise _KeyError("mqtt.topic_prefix", str(exc)) from None
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise _KeyError(
                "mqtt.reconnect_max_s",
                f"{self.reconnect_max_s} is below reconnect_initial_s {self.reconnect_initial_s}",
            )


class TrustSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # key_id -> base64 of the 32 raw Ed25519 public key bytes (or PEM text)
    keys: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for key_id, text in self.keys.items():
            try:
                actual = key_id_of_raw(public_key_bytes(text))
            except SignatureError as exc:
                raise _KeyError(f"trust.keys.{key_id}", str(exc)) from None
            if actual != key_id:
                raise _KeyError(
                    f"trust.keys.{key_id}", f"the public key's id is {actual!r}, not {key_id!r}"
                )


class SourceSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    type: str = "stdin"  # csv | stdin | mqtt | an "edgeloop.sources" entry point name
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class TelemetrySettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    batch_max_readings: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    batch_max_age_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    # raw: readings go to the hub; summaries: no readings, drift summaries carry the statistics
    # the hub trains from ([federated]); anomalies: no readings, no training statistics
    upload: Literal["raw", "summaries", "anomalies"] = "raw"
    # msgpack: the same batch in about half the bytes, its numbers as raw float64
    # (shared/packed.py), read by hubs of this build and later; json: what every hub reads;
    # auto: msgpack while every hub heard online announces it, json otherwise
    encoding: Literal["auto", "json", "msgpack"] = "auto"


class OutboxSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 64 * 1024 * 1024
    max_age_s: PositiveSeconds = 7 * 86400.0  # telemetry older than this is dropped
    anomaly_max_age_s: PositiveSeconds = 30 * 86400.0  # anomalies are kept longest
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    # A message the broker took but no hub acknowledgement covers after this long is sent again
    # when an acknowledgement shows it missing; and the newest such message is sent again as a
    # probe, at intervals doubling up to probe_max_s while no hub answers.
    ack_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    probe_max_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0
    # Warn when connected this long without any hub announcing itself under the topic prefix.
    hub_silence_warn_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    synchronous: Literal["full", "normal"] = "full"  # full: survives power loss, not only kill


class ModelSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    shadow_windows: Annotated[int, msgspec.Meta(ge=0)] = 20  # 0: activate without a shadow run
    # refused when it flags more than this share of the shadow windows that the running model
    # does not flag too (a real fault during the update counts against neither)
    max_shadow_anomaly_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    download_timeout_s: PositiveSeconds = 120.0
    chunk_retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    realert_windows: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: the model's window length
    calibration_windows: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: keep the manifest's threshold
    calibration_quantile: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.999
    calibration_factor: Annotated[float, msgspec.Meta(gt=0, le=_MAX)] = 1.0
    num_threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # FOR TESTS AND SIMULATIONS ONLY: the runtime the status reports instead of the one that
    # loads models, from the first status on (the hub picks each device's model variant by it,
    # so one process can stand in for a device on another runtime). Never set on a device.
    simulated_runtime: AgentRuntime | None = None


class HeartbeatSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    interval_s: PositiveSeconds = 30.0


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class LogSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: str = "INFO"  # any case in the file
    json_format: bool = msgspec.field(default=False, name="json")

    def __post_init__(self) -> None:
        if self.level.upper() not in _LEVELS:
            raise _KeyError("log.level", f"{self.level!r} is not one of {', '.join(_LEVELS)}")
        msgspec.structs.force_setattr(self, "level", self.level.upper())


class DaemonSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    grace_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 10.0  # flush time on SIGTERM/SIGINT
    # unmap library pages only start-up used, once settled (edge_agent/daemon/memory.py)
    release_startup_pages: bool = True


class AgentConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    device_id: str
    state_dir: Path = Path("./agent-state")
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    trust: TrustSettings = msgspec.field(default_factory=TrustSettings)
    source: SourceSettings = msgspec.field(default_factory=SourceSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    adaptation: AdaptationSettings = msgspec.field(default_factory=AdaptationSettings)
    drift: DriftSettings = msgspec.field(default_factory=DriftSettings)
    federated: FederatedSettings = msgspec.field(default_factory=FederatedSettings)
    heartbeat: HeartbeatSettings = msgspec.field(default_factory=HeartbeatSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)

    def __post_init__(self) -> None:
        try:
            validate_device_id(self.device_id)
        except TopicError as exc:
            raise _KeyError("device_id", str(exc)) from None

    @property
    def username(self) -> str:
        return self.mqtt.username or self.device_id

    def topics(self) -> Topics:
        return Topics(self.mqtt.topic_prefix)


class _KeyError(ValueError):
    """A check across fields failed; carries the key so the message can name it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"key {key!r}: {problem}")


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path:
        if isinstance(value, str):
            return Path(value)
        # a TypeError becomes a ValidationError at the key (NotImplementedError would escape)
        raise TypeError(f"Expected a path (`str`), got `{type(value).__name__}`")
    raise NotImplementedError(f"{kind} is not a config type")


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")

# Keys of earlier versions, and what replaced them: named, not just refused as unknown.
_ACKNOWLEDGED = ("a message now stays in the outbox until the hub acknowledges that it stored "
                 "it; remove the key (outbox.ack_timeout_s and outbox.probe_max_s set when "
                 "unacknowledged messages are sent again)")
_RETIRED = {
    "outbox.resend_window_s": _ACKNOWLEDGED,
    "outbox.resend_margin_s": _ACKNOWLEDGED,
}


def config_from_dict(raw: Any, where: str = "config") -> AgentConfig:
    """Validate parsed TOML (or an equal dict) as an agent config, or raise :class:`ConfigError`
    naming the key, what is wrong, and the value given."""
    try:
        return msgspec.convert(raw, type=AgentConfig, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(str(exc), raw)}") from None


def _describe(text: str, raw: Any) -> str:
    match = _AT.search(text)
    path = [p for p in re.split(r"\.|\[|\]", match.group("path")) if p] if match else []
    message = text[: match.start()] if match else text
    if message.startswith("Object contains unknown field"):
        key = ".".join([*path, message.split("`")[1]])
        if key in _RETIRED:
            return f"key {key!r} is no longer used: {_RETIRED[key]}"
        return f"unknown key {key!r}"
    if message.startswith("Object missing required field"):
        return f"key {'.'.join([*path, message.split('`')[1]])!r} is required"
    if match and match.group("path").endswith("[...]"):  # a value in a table of free keys
        path += _entry_of_type(_at(raw, path), message)
    own = _OWN_KEY.match(message)
    if own:  # a check across fields (_KeyError) names its key itself, as a repr
        path, message = ast.literal_eval(own.group("key")).split("."), message[own.end() :]
    if not path:
        return message
    value: Any = raw
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    shown = "{…}" if isinstance(value, dict) else repr(value)[:80]
    return f"key {'.'.join(path)!r}: {message} (got {shown})"


_OWN_KEY = re.compile(r"""key (?P<key>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"): """)
_GOT = re.compile(r"got `(?P<got>\w+)`")
_TOML_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool,
                                "array": list, "object": dict}


def _at(raw: Any, path: list[str]) -> Any:
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _entry_of_type(table: Any, message: str) -> list[str]:
    """msgspec names the table (``trust.keys``) for a wrong value in it: find the entry."""
    got = _GOT.search(message)
    kind = _TOML_TYPES.get(got.group("got")) if got else None
    if isinstance(table, dict) and kind is not None:
        for key, value in table.items():
            if type(value) is kind:
                return [str(key)]
    return []


def load_config(path: Path | str) -> AgentConfig:
    """Read and validate an agent TOML file; a relative ``state_dir`` or ``mqtt.tls_ca_file``
    is relative to the file (an enrollment bundle keeps ca.crt beside agent.toml)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = config_from_dict(raw, str(path))
    if not config.state_dir.is_absolute() and "state_dir" in raw:
        config = config.replace(state_dir=path.parent / config.state_dir)
    ca_file = config.mqtt.tls_ca_file
    if ca_file and not Path(ca_file).is_absolute():
        config = config.replace(mqtt=config.mqtt.replace(tls_ca_file=str(path.parent / ca_file)))
    return config
