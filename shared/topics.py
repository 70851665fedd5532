"""Every MQTT topic string edgeloop uses, built and parsed in one place.

Nothing else in the code base formats or splits topic strings; both the hub and the agents call
:class:`Topics`, so a change of layout is a change here only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "BROKER_STATS",
    "DEFAULT_PREFIX",
    "DEVICE_ID_PATTERN",
    "MODEL_NAME_PATTERN",
    "VARIANT_PATTERN",
    "DEVICE_WRITES",
    "DYNSEC_CONTROL",
    "DYNSEC_RESPONSE",
    "HUB_STATUS",
    "HUB_WRITES",
    "TRUST",
    "DeviceTopic",
    "ParsedTopic",
    "TopicAccess",
    "TopicError",
    "TopicKind",
    "Topics",
    "broker_admin_access",
    "validate_device_id",
    "validate_model_name",
    "validate_variant",
]

DEFAULT_PREFIX = "edgeloop/v1"
DEVICE_ID_PATTERN = r"[A-Za-z0-9._-]{1,64}"
MODEL_NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)  # fullmatch: $ would accept a final newline
# A variant of a model version: its quantization (shared.manifest.Quantization values), kept a
# plain pattern here so that an agent can parse a desired naming a variant it does not know and
# refuse it in its reported state, rather than drop the message.
VARIANT_PATTERN = r"[a-z0-9]{1,16}"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_VARIANT_RE = re.compile(VARIANT_PATTERN)
HUB_SHARE_GROUP = "hub"
# mosquitto's dynamic-security plugin takes commands here and answers on the response topic.
DYNSEC_CONTROL = "$CONTROL/dynamic-security/v1"
DYNSEC_RESPONSE = f"{DYNSEC_CONTROL}/response"
# mosquitto's own figures (clients, queued and dropped messages), which every hub relays in its
# metrics (cloud_hub.metrics.broker)
BROKER_STATS = "$SYS/broker/#"


class TopicError(ValueError):
    """A topic, device id or model name that does not follow the layout."""


class DeviceTopic(StrEnum):
    """The per-device topics, named by their last level."""

    TELEMETRY = "telemetry"
    ANOMALIES = "anomalies"
    STATUS = "status"
    HEARTBEAT = "heartbeat"
    REPORTED = "reported"
    DESIRED = "desired"
    ACK = "ack"  # hub -> agent, retained: what the hub has stored (delivery watermark)
    DRIFT = "drift"  # agent -> hub: statistics of what the model sees, never raw readings


class TopicKind(StrEnum):
    """What a parsed topic names (:attr:`ParsedTopic.kind`): a device stream (the values of
    :class:`DeviceTopic`), a model's manifest or chunk, a trust list, or a hub's presence."""

    TELEMETRY = "telemetry"
    ANOMALIES = "anomalies"
    STATUS = "status"
    HEARTBEAT = "heartbeat"
    REPORTED = "reported"
    DESIRED = "desired"
    ACK = "ack"
    DRIFT = "drift"
    MANIFEST = "manifest"
    CHUNK = "chunk"
    TRUST = "trust"  # its version in ParsedTopic.model_version
    HUB_STATUS = "hub_status"  # ParsedTopic.device_id: the hub's client id


# Every device stream is a kind (TopicKind(value) raises at import if one is missing).
_DEVICE_KINDS = frozenset(TopicKind(t.value) for t in DeviceTopic)
HUB_STATUS = TopicKind.HUB_STATUS
TRUST = TopicKind.TRUST


# Who writes which device stream: the ACL and the hub's subscriptions are built from these.
DEVICE_WRITES = (
    DeviceTopic.TELEMETRY,
    DeviceTopic.ANOMALIES,
    DeviceTopic.STATUS,
    DeviceTopic.HEARTBEAT,
    DeviceTopic.REPORTED,
    DeviceTopic.DRIFT,
)
HUB_WRITES = (DeviceTopic.DESIRED, DeviceTopic.ACK)


def validate_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise TopicError(
            f"device id {device_id!r} is invalid: it must match {DEVICE_ID_PATTERN}"
        )
    return device_id


def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name):
        raise TopicError(f"model name {name!r} is invalid: it must match {MODEL_NAME_PATTERN}")
    return name


def validate_variant(variant: str) -> str:
    if not isinstance(variant, str) or not _VARIANT_RE.fullmatch(variant):
        raise TopicError(f"model variant {variant!r} is invalid: it must match {VARIANT_PATTERN}")
    return variant


def _validate_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TopicError(f"model version {version!r} is invalid: it must be an integer >= 1")
    return version


@dataclass(frozen=True)
class ParsedTopic:
    """What a received topic names: a device stream, or a model's manifest or chunk (of its
    published variant, or of the variant ``variant``)."""

    kind: TopicKind
    device_id: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    chunk_index: int | None = None
    variant: str | None = None

    @property
    def stream(self) -> DeviceTopic | None:
        """The device stream a ``devices/{d}/…`` topic names, else None."""
        if self.kind in _DEVICE_KINDS and self.device_id is not None:
            return DeviceTopic(self.kind.value)
        return None


@dataclass(frozen=True)
class TopicAccess:
    """What one MQTT identity may do: topics it may publish to, filters it may subscribe to.

    The broker's ACL (whatever enforces it) is generated from this, so adding a topic here
    is the only change the ACL needs."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True)
class Topics:
    """Topic builder for one prefix (``edgeloop/v1`` unless configured otherwise)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise TopicError(f"topic prefix {self.prefix!r} must be non-empty without edge slashes")
        if any(c in self.prefix for c in "+#\x00"):
            raise TopicError(f"topic prefix {self.prefix!r} must not contain +, # or NUL")

    # -- per-device topics -------------------------------------------------------------
    def device(self, device_id: str, which: DeviceTopic | str) -> str:
        validate_device_id(device_id)
        return f"{self.prefix}/devices/{device_id}/{DeviceTopic(which).value}"

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, DeviceTopic.TELEMETRY)

    def anomalies(self, device_id: str) -> str:
        return self.device(device_id, DeviceTopic.ANOMALIES)

    def drift(self, device_id: str) -> str:
        """Drift summaries, agent -> hub (:class:`shared.messages.DriftSummary`)."""
        return self.device(device_id, DeviceTopic.DRIFT)

    def status(self, device_id: str) -> str:
        return self.device(device_id, DeviceTopic.STATUS)

    def heartbeat(self, device_id: str) -> str:
        return self.device(device_id, DeviceTopic.HEARTBEAT)

    def reported(self, device_id: str) -> str:
        return self.device(device_id, DeviceTopic.REPORTED)

    def desired(self, device_id: str) -> str:
        return self.device(device_id, DeviceTopic.DESIRED)

    def ack(self, device_id: str) -> str:
        """Retained delivery acknowledgement, hub -> device (:class:`shared.messages.Ack`)."""
        return self.device(device_id, DeviceTopic.ACK)

    # -- model topics ------------------------------------------------------------------
    # A version's published variant lives at ``models/{name}/{version}/manifest`` and
    # ``…/chunks/{i}`` (what agents of every build fetch); each other variant that passed the
    # parity gate under ``models/{name}/{version}/variants/{quantization}/…``.
    def model_prefix(self, name: str, version: int, variant: str | None = None) -> str:
        validate_model_name(name)
        _validate_version(version)
        if variant is None:
            return f"{self.prefix}/models/{name}/{version}"
        return f"{self.prefix}/models/{name}/{version}/variants/{validate_variant(variant)}"

    def manifest(self, name: str, version: int, variant: str | None = None) -> str:
        return f"{self.model_prefix(name, version, variant)}/manifest"

    def chunk(self, name: str, version: int, index: int, variant: str | None = None) -> str:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise TopicError(f"chunk index {index!r} is invalid: it must be an integer >= 0")
        return f"{self.model_prefix(name, version, variant)}/chunks/{index}"

    def chunks_filter(self, name: str, version: int, variant: str | None = None) -> str:
        return f"{self.model_prefix(name, version, variant)}/chunks/+"

    # -- the trust list (signed key sets, one retained record per version) -----------------
    def trust(self, version: int) -> str:
        """Retained, signed trust list ``version``; agents walk the versions in order."""
        _validate_version(version)
        return f"{self.prefix}/trust/{version}"

    def all_trust(self) -> str:
        return f"{self.prefix}/trust/+"

    # -- the hub's own presence -----------------------------------------------------------
    def hub_status(self, hub_id: str) -> str:
        """Retained birth/will of one hub process (its ingest client id)."""
        validate_device_id(hub_id)
        return f"{self.prefix}/hub/{hub_id}/status"

    def all_hub_status(self) -> str:
        return f"{self.prefix}/hub/+/status"

    # -- who may do what (the ACL) ------------------------------------------------------
    def device_access(self, device_id: str) -> TopicAccess:
        """A device writes only its own streams and reads only its own ``desired`` and
        ``ack``, the models, the trust lists and the hubs' status."""
        return TopicAccess(
            publish=tuple(self.device(device_id, t) for t in DEVICE_WRITES),
            subscribe=tuple(self.device(device_id, t) for t in HUB_WRITES)
            + (f"{self.prefix}/models/#", self.all_trust(), self.all_hub_status()),
        )

    def hub_access(self, hub_id: str) -> TopicAccess:
        """A hub reads every device stream and the broker's figures, and writes ``desired``,
        ``ack``, the models, the trust lists and its own status record."""
        return TopicAccess(
            publish=tuple(self.all_devices(t) for t in HUB_WRITES)
            + (f"{self.prefix}/models/#", f"{self.prefix}/trust/#", self.hub_status(hub_id)),
            subscribe=(f"{self.prefix}/devices/#", f"$share/+/{self.prefix}/devices/#",
                       f"{self.prefix}/models/#", f"{self.prefix}/trust/#",
                       self.all_hub_status(), BROKER_STATS),
        )

    # -- subscription filters ----------------------------------------------------------
    def all_devices(self, which: DeviceTopic | str) -> str:
        """Filter matching one stream of every device, e.g. ``edgeloop/v1/devices/+/status``."""
        return f"{self.prefix}/devices/+/{DeviceTopic(which).value}"

    def hub_shared(self, which: DeviceTopic | str, group: str = HUB_SHARE_GROUP) -> str:
        """Shared subscription so several hub processes split one stream between them."""
        return f"$share/{group}/{self.all_devices(which)}"

    # -- parsing -----------------------------------------------------------------------
    def parse(self, topic: str) -> ParsedTopic:
        """Say what a received topic names, or raise :class:`TopicError` naming the problem."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is outside prefix {self.prefix!r}")
        parts = topic[len(head) :].split("/")
        if len(parts) == 3 and parts[0] == "devices":
            device_id = validate_device_id(parts[1])
            try:
                kind = DeviceTopic(parts[2])
            except ValueError:
                raise TopicError(
                    f"topic {topic!r} names unknown device stream {parts[2]!r}"
                ) from None
            return ParsedTopic(kind=TopicKind(kind.value), device_id=device_id)
        if len(parts) >= 4 and parts[0] == "models":
            name = validate_model_name(parts[1])
            version = _parse_int(parts[2], "model version", topic)
            rest, variant = parts[3:], None
            if len(rest) >= 3 and rest[0] == "variants":
                variant, rest = validate_variant(rest[1]), rest[2:]
            if len(rest) == 1 and rest[0] == "manifest":
                return ParsedTopic(kind=TopicKind.MANIFEST, model_name=name,
                                   model_version=version, variant=variant)
            if len(rest) == 2 and rest[0] == "chunks":
                index = _parse_int(rest[1], "chunk index", topic, minimum=0)
                return ParsedTopic(kind=TopicKind.CHUNK, model_name=name, model_version=version,
                                   chunk_index=index, variant=variant)
        if len(parts) == 2 and parts[0] == "trust":
            return ParsedTopic(kind=TopicKind.TRUST,
                               model_version=_parse_int(parts[1], "trust version", topic))
        if len(parts) == 3 and parts[0] == "hub" and parts[2] == "status":
            return ParsedTopic(kind=TopicKind.HUB_STATUS, device_id=validate_device_id(parts[1]))
        raise TopicError(f"topic {topic!r} does not follow the edgeloop layout")


def broker_admin_access() -> TopicAccess:
    """The hub's broker-admin identity: it manages device credentials at run time through the
    dynamic-security plugin, and may do nothing else."""
    return TopicAccess(publish=(DYNSEC_CONTROL,), subscribe=(DYNSEC_RESPONSE,))


def _parse_int(text: str, what: str, topic: str, minimum: int = 1) -> int:
    # ASCII digits as Topics writes them: str.isdigit() also takes "²" (int() refuses it) and
    # "١" (int() reads 1), and "01" would name the topic of 1 under another string.
    if not (text.isascii() and text.isdigit()) or text != str(int(text)) or int(text) < minimum:
        raise TopicError(f"topic {topic!r} has invalid {what} {text!r}")
    return int(text)
