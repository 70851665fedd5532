"""Enrolling and revoking devices: the hub's registry and the broker's credentials together.

Enrolling a device records it (only enrolled devices may send data, be trained on or take a
rollout), creates its broker identity (own password, own role from ``Topics.device_access``,
client id bound) through the dynamic-security plugin, and returns a bundle: the ``agent.toml``
that ``edge-agent run --config`` runs as it is, the broker's CA and the pinned signing key(s).
The hub keeps no device password: a lost bundle means revoke and enroll again.

Revoking deletes the broker identity (mosquitto disconnects the device at once and refuses it
from then on) and marks the registry entry revoked.
"""

from __future__ import annotations

import logging
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_hub.core.config import Settings
from cloud_hub.db.enrollments import (
    AlreadyRevoked,
    NotEnrolled,
    record_enrollment,
    record_revocation,
)
from cloud_hub.identity.audit import (
    CredentialAudit,
    audit_credentials,
    delete_revoked,
    enrollment_mark,
)
from cloud_hub.identity.dynsec import (
    DynsecClient,
    Identity,
    client_commands,
    remove_commands,
    role_update_commands,
)
from cloud_hub.identity.revocations import RevocationRetry
from cloud_hub.identity.roles import (
    HUB_ADMIN_SUFFIX,
    device_identity,
    device_rolename,
    hub_credential,
    hub_identities,
)
from shared.keys import fingerprint_of_raw, public_key_bytes
from shared.topics import validate_device_id

__all__ = ["DEFAULT_STATE_DIR", "Bundle", "DeviceEnrollment", "EnrollmentError", "EnrollmentPlan",
           "EnrollmentProgress", "agent_toml"]

log = logging.getLogger(__name__)

# The systemd unit's StateDirectory (deploy/edgeloop-agent.service).
DEFAULT_STATE_DIR = "/var/lib/edgeloop"
CA_FILE_NAME = "ca.crt"


class EnrollmentError(RuntimeError):
    """The broker could not be told about the device (it is then not enrolled either)."""


@dataclass(frozen=True)
class EnrollmentProgress:
    """Where an enrollment is: ``stage`` (clearing, credentials, recording) and how many of
    ``total`` devices have their broker credential."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class EnrollmentPlan:
    """A checked enrollment, nothing done yet: its devices, identities and bundles."""

    device_ids: list[str]
    identities: list[Identity]
    bundles: list[Bundle]


@dataclass(frozen=True)
class Bundle:
    """What one device needs: write ``agent_toml`` as agent.toml and ``ca_pem`` beside it as
    ca.crt, then ``edge-agent run --config agent.toml``."""

    device_id: str
    agent_toml: str
    ca_pem: str | None
    username: str | None
    password: str | None
    mqtt: dict[str, Any]
    trust_keys: dict[str, str]
    fingerprints: dict[str, str]
    broker_credential: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def write(self, folder: Path) -> Path:
        """Write agent.toml (0600: it holds the password) and ca.crt into ``folder``."""
        from cloud_hub.identity.pki import write_private

        folder.mkdir(parents=True, exist_ok=True)
        if self.ca_pem is not None:
            (folder / CA_FILE_NAME).write_text(self.ca_pem)
        path = folder / "agent.toml"
        write_private(path, self.agent_toml.encode())
        return path


def _toml_string(value: str) -> str:
    """A TOML basic string. Not ``json.dumps``: it writes a character beyond the BMP as a
    surrogate pair (``\\ud83d\\ude00``), which TOML refuses, and leaves DEL unescaped."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif (code < 0x20 and ch != "\t") or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"a lone surrogate (U+{code:04X}) cannot be written to TOML")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_string(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise ValueError(f"cannot write {type(value).__name__} to TOML")


def agent_toml(device_id: str, *, state_dir: str, mqtt: dict[str, Any],
               trust_keys: dict[str, str], fingerprints: dict[str, str],
               source: dict[str, Any]) -> str:
    lines = [
        f"# edgeloop agent for {device_id}, written by `cloud-hub devices enroll`.",
        "# Holds this device's broker password: keep it 0600, readable by the agent only.",
        "# Run:  edge-agent run --config agent.toml   (check: edge-agent check --config ...)",
        f"device_id = {_toml_value(device_id)}",
        f"state_dir = {_toml_value(state_dir)}",
        "",
        "[mqtt]",
        *(f"{k} = {_toml_value(v)}" for k, v in mqtt.items()),
        "",
        "[trust.keys]",
        "# The hub's signing key(s), pinned here. Check each fingerprint against",
        "# `cloud-hub keys fingerprint` on the hub, over a channel other than this file.",
    ]
    for key_id, public in trust_keys.items():
        lines.append(f"# {key_id}: {fingerprints[key_id]}")
        lines.append(f"{key_id} = {_toml_value(public)}")
    lines += [
        "",
        "[source]",
        "# Replace with the device's sensors: csv | stdin | mqtt | an entry point.",
        f"type = {_toml_value(source.get('type', 'simulated'))}",
        f"options = {_toml_value(source.get('options', {}))}",
        "",
    ]
    return "\n".join(lines)


@dataclass
class DeviceEnrollment:
    """Enroll and revoke devices for one hub (its settings, store and signing key(s))."""

    settings: Settings
    engine: Engine
    trust_keys: Any  # () -> dict[key_id, base64 public key]
    _control: DynsecClient | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    retry: RevocationRetry | None = None  # takes the revocations the broker did not confirm

    @property
    def manages_broker(self) -> bool:
        """The hub creates device credentials itself (a secure broker with dynsec)."""
        return self.settings.mqtt_dynsec and self.settings.mqtt_password is not None

    def _admin(self) -> DynsecClient:
        if self._control is None:
            self._control = hub_admin_client(self.settings)
        return self._control

    def sync_roles(self) -> list[str]:
        """:func:`sync_hub_roles` on the hub's own broker-admin connection."""
        with self._lock:
            return sync_hub_roles(self._admin(), self.settings)

    def close(self) -> None:
        with self._lock:
            if self._control is not None:
                self._control.stop()
                self._control = None

    def enroll(self, device_ids: list[str], *, state_dir: str = DEFAULT_STATE_DIR,
               mqtt_host: str | None = None, mqtt_port: int | None = None,
               source: dict[str, Any] | None = None,
               progress: Callable[[EnrollmentProgress], None] | None = None) -> list[Bundle]:
        """Enroll these devices (each must not be enrolled now); one bundle each."""
        plan = self.prepare(device_ids, state_dir=state_dir, mqtt_host=mqtt_host,
                            mqtt_port=mqtt_port, source=source)
        return self.carry_out(plan, progress)

    def prepare(self, device_ids: list[str], *, state_dir: str = DEFAULT_STATE_DIR,
                mqtt_host: str | None = None, mqtt_port: int | None = None,
                source: dict[str, Any] | None = None) -> EnrollmentPlan:
        """Check an enrollment and make its bundles, touching neither the broker nor the
        registry: what would be refused (an enrolled device, a value TOML cannot hold) is
        refused here, before anything is done."""
        for device_id in device_ids:
            validate_device_id(device_id)
        if len(set(device_ids)) != len(device_ids):
            raise ValueError("a device id is listed twice")
        s = self.settings
        from cloud_hub.db.enrollments import enrolled_among

        with Session(self.engine) as session:
            already = sorted(enrolled_among(session, device_ids))
        if already:
            raise FileExistsError(f"device(s) {already} are enrolled already; revoke first")
        identities = [device_identity(s.topics, d) for d in device_ids]
        bundles = self._bundles(identities, state_dir=state_dir, mqtt_host=mqtt_host,
                                mqtt_port=mqtt_port, source=source)
        return EnrollmentPlan(list(device_ids), identities, bundles)

    def carry_out(self, plan: EnrollmentPlan,
                  progress: Callable[[EnrollmentProgress], None] | None = None) -> list[Bundle]:
        """Create the plan's broker credentials, then record the devices; ``progress`` hears
        how many devices have their credential so far."""
        device_ids, total = plan.device_ids, len(plan.device_ids)

        def tell(stage: str, done: int) -> None:
            if progress is not None:
                progress(EnrollmentProgress(stage, done, total))

        if self.manages_broker:
            with self._lock:
                try:
                    # A credential left over from an earlier enrollment goes first.
                    tell("clearing", 0)
                    self._admin().execute(
                        [c for d in device_ids for c in remove_commands(d, device_rolename(d))],
                        ignore=("not found",))
                    commands = client_commands(plan.identities,
                                               description=enrollment_mark(time.time()))
                    clients_within = list(accumulate(
                        c["command"] == "createClient" for c in commands))
                    tell("credentials", 0)
                    self._admin().execute(commands, progress=lambda n: tell(
                        "credentials", clients_within[n - 1] if n else 0))
                except Exception as exc:
                    raise EnrollmentError(f"the broker refused the new credential(s): {exc}") \
                        from exc
        tell("recording", total)
        with Session(self.engine) as session:
            record_enrollment(session, device_ids, broker_credential=self.manages_broker)
        log.info("enrolled %d device(s)%s", total,
                 " with broker credentials" if self.manages_broker else " (registry only)")
        return plan.bundles

    def _bundles(self, identities: list[Identity], *, state_dir: str, mqtt_host: str | None,
                 mqtt_port: int | None, source: dict[str, Any] | None) -> list[Bundle]:
        s = self.settings
        keys = dict(self.trust_keys())
        fingerprints = {k: fingerprint_of_raw(public_key_bytes(v)) for k, v in keys.items()}
        ca_pem = s.mqtt_ca_file.read_text() if s.mqtt_tls and s.mqtt_ca_file else None
        bundles = []
        for ident in identities:
            mqtt: dict[str, Any] = {"host": mqtt_host or s.mqtt_host,
                                    "port": mqtt_port or s.mqtt_port,
                                    "topic_prefix": s.topic_prefix, "tls": s.mqtt_tls}
            if s.mqtt_tls and ca_pem is not None:
                mqtt["tls_ca_file"] = CA_FILE_NAME  # beside agent.toml
            credential = ident.credential if self.manages_broker else None
            if credential is not None:
                mqtt.update(username=credential.username, password=credential.password)
            device_source = source or {"type": "simulated",
                                       "options": {"profile": "pump", "device_id": ident.
                                                   credential.username, "rate_hz": 1.0}}
            text = agent_toml(ident.credential.username, state_dir=state_dir, mqtt=mqtt,
                              trust_keys=keys, fingerprints=fingerprints, source=device_source)
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"the bundle's agent.toml would not parse: {exc}") from None
            bundles.append(Bundle(
                device_id=ident.credential.username, agent_toml=text, ca_pem=ca_pem,
                username=credential.username if credential else None,
                password=credential.password if credential else None, mqtt=mqtt,
                trust_keys=keys, fingerprints=fingerprints,
                broker_credential=self.manages_broker))
        return bundles

    def revoke(self, device_id: str) -> dict[str, Any]:
        """Delete the device's broker identity (it is disconnected and refused at once) and
        mark it revoked; ``broker_seconds``: from this call until the broker confirmed."""
        validate_device_id(device_id)
        started = time.monotonic()
        with Session(self.engine) as session:
            try:
                revoked_at = record_revocation(session, device_id)
            except AlreadyRevoked as exc:
                if not self.manages_broker:
                    raise
                # A revocation whose broker step failed (503) is finished by asking again:
                # the credential must not outlive the registry's word.
                self._delete_credential(device_id)
                raise AlreadyRevoked(f"{exc}; its broker credential is confirmed deleted") \
                    from None
        broker_seconds: float | None = None
        if self.manages_broker:
            self._delete_credential(device_id)
            broker_seconds = round(time.monotonic() - started, 4)
        log.info("revoked device %s (broker: %s s)", device_id, broker_seconds)
        return {"device_id": device_id, "revoked_at": revoked_at,
                "broker_seconds": broker_seconds, "broker_credential_deleted": self.manages_broker}

    def audit(self, **options: Any) -> CredentialAudit:
        """:func:`~cloud_hub.identity.audit.audit_credentials` on the hub's broker-admin
        connection, between this process's enrollments and revocations."""
        with self._lock:
            return audit_credentials(self._admin(), self.engine, **options)

    def delete_revoked(self, device_ids: list[str]) -> dict[str, str]:
        """:func:`~cloud_hub.identity.audit.delete_revoked` on the hub's broker-admin
        connection: what the revocations of these devices left on the broker, deleted."""
        with self._lock:
            return delete_revoked(self._admin(), self.engine, device_ids)

    def _delete_credential(self, device_id: str) -> None:
        """Delete the device's broker client and role ("not found" counts as deleted); if the
        broker does not confirm it, ``retry`` (the hub's :class:`RevocationRetry`) takes it."""
        with self._lock:
            try:
                self._admin().execute(remove_commands(device_id, device_rolename(device_id)),
                                      ignore=("not found",))
                return
            except Exception as exc:
                error = exc
        if self.retry is not None:
            self.retry.add(device_id)
        raise EnrollmentError(
            f"device {device_id!r} is revoked in the registry, but the broker did not confirm "
            f"deleting its credential: {error}; "
            + ("the hub keeps retrying until it does (revoke it again to retry now)"
               if self.retry is not None else "revoke it again to retry")) from error



def hub_admin_client(s: Settings) -> DynsecClient:
    """The hub's broker-admin connection (``<hub id>-admin``), started."""
    if not (s.mqtt_dynsec and s.mqtt_password is not None):
        raise EnrollmentError("the hub does not manage the broker's identities: it needs "
                              "EDGELOOP_MQTT_DYNSEC and EDGELOOP_MQTT_PASSWORD")
    credential = hub_credential(s.mqtt_client_id, s.mqtt_password, HUB_ADMIN_SUFFIX)
    return DynsecClient(host=s.mqtt_host, port=s.mqtt_port, credential=credential,
                        ca_file=s.mqtt_ca_file if s.mqtt_tls else None,
                        timeout=s.publish_timeout_s).start()


def sync_hub_roles(control: DynsecClient, s: Settings) -> list[str]:
    """Give the hub's own roles on the broker the ACL entries this version needs and they lack
    (a broker set up by an earlier version); what was added, as ``role: acl topic``. Nothing
    is removed."""
    assert s.mqtt_password is not None
    wanted = hub_identities(s.topics, s.mqtt_client_id, s.mqtt_password)
    names = sorted({i.rolename for i in wanted})
    answers = control.execute([{"command": "getRole", "rolename": n} for n in names],
                              ignore=("not found",))
    roles = {n: a["data"]["role"].get("acls", []) for n, a in zip(names, answers, strict=True)
             if not a.get("error")}
    commands = role_update_commands(wanted, roles)
    if commands:
        control.execute(commands)
    return [f"{c['rolename']}: {c['acltype']} {c['topic']}" for c in commands]


__all__ += ["NotEnrolled", "hub_admin_client", "sync_hub_roles"]
