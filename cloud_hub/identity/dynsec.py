"""mosquitto's dynamic-security plugin: per-identity passwords, roles and client-id bindings.

Two ways in, one vocabulary:
- :func:`initial_config` writes the plugin's JSON file before the broker starts (the broker
  admin and the hub's identities; also a fleet of devices at once, for a bench);
- :class:`DynsecClient` sends the same changes to a running broker over
  ``$CONTROL/dynamic-security/v1`` (enrolling and revoking a device while the fleet runs).

Every identity gets its own role built from a :class:`shared.topics.TopicAccess`, so the ACL
follows the topic prefix, and its own client id binding, so nobody can take over another's
client id. The default is to refuse: no publish and no subscribe that a role does not allow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared.tls import client_context
from shared.topics import DYNSEC_CONTROL, DYNSEC_RESPONSE, TopicAccess

__all__ = [
    "Credential",
    "DynsecClient",
    "DynsecError",
    "Identity",
    "PBKDF2_ITERATIONS",
    "client_commands",
    "role_update_commands",
    "hash_password",
    "initial_config",
    "new_password",
    "remove_commands",
    "role_acls",
    "write_config",
]

log = logging.getLogger(__name__)

# mosquitto_ctrl's own default; PBKDF2-SHA512 at the broker for every CONNECT.
PBKDF2_ITERATIONS = 101
# Commands per control message, and so per wait of ``timeout``. mosquitto 2.0's plugin saves
# its whole JSON file after every create command (not once per message), so a command costs
# time in proportion to the identities the broker holds: measured on 2 cores under load, 200
# createRole took 0.4 s with 0 identities there and 10 s with 800; one message of 400 commands
# then outlasted the 10 s timeout and a bulk enrollment of 1,000 devices failed with a 503.
# Small messages answered one after the other: the timeout bounds a step in which the broker
# makes no progress, not the whole (slow but moving) list.
_COMMANDS_PER_MESSAGE = 25


class DynsecError(RuntimeError):
    """The broker refused a dynamic-security command, or did not answer in time."""


@dataclass(frozen=True)
class Credential:
    """What one MQTT client needs to log in: its username, password and bound client id."""

    username: str
    password: str
    client_id: str

    def to_dict(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password,
                "client_id": self.client_id}


@dataclass(frozen=True)
class Identity:
    """A credential plus the role (name and topic access) the broker gives it."""

    credential: Credential
    rolename: str
    access: TopicAccess


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> dict[str, Any]:
    """The plugin's stored form of a password (PBKDF2-HMAC-SHA512 over the raw salt)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {"password": base64.b64encode(digest).decode(),
            "salt": base64.b64encode(salt).decode(), "iterations": iterations}


def role_acls(access: TopicAccess) -> list[dict[str, Any]]:
    """The role's ACL entries: publish and subscribe exactly what ``access`` lists, and receive
    what those subscriptions match (the broker checks both; ``$CONTROL`` answers need it)."""
    acls = [{"acltype": "publishClientSend", "topic": t, "priority": 0, "allow": True}
            for t in access.publish]
    for t in access.subscribe:
        acls.append({"acltype": "subscribePattern", "topic": t, "priority": 0, "allow": True})
        if not t.startswith("$share/"):
            acls.append({"acltype": "publishClientReceive", "topic": t, "priority": 0,
                         "allow": True})
    return acls


_DEFAULT_ACCESS = [
    # Refuse whatever no role allows.
    {"acltype": "publishClientSend", "allow": False},
    {"acltype": "publishClientReceive", "allow": False},
    {"acltype": "subscribe", "allow": False},
    {"acltype": "unsubscribe", "allow": True},
]


def initial_config(identities: Iterable[Identity]) -> dict[str, Any]:
    """The plugin's JSON file holding these identities (one role each) and nothing else."""
    clients: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    seen_roles: set[str] = set()
    for ident in identities:
        c = ident.credential
        clients.append({
            "username": c.username, "clientid": c.client_id, **hash_password(c.password),
            "roles": [{"rolename": ident.rolename}],
        })
        if ident.rolename not in seen_roles:
            seen_roles.add(ident.rolename)
            roles.append({"rolename": ident.rolename, "acls": role_acls(ident.access)})
    return {
        "clients": clients, "groups": [], "roles": roles,
        "defaultACLAccess": {a["acltype"]: a["allow"] for a in _DEFAULT_ACCESS},
    }


def write_config(path: Path, identities: Iterable[Identity]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(initial_config(identities), indent=1))
    tmp.chmod(0o600)
    tmp.replace(path)


def role_update_commands(identities: Iterable[Identity], roles: dict[str, list[dict[str, Any]]]
                         ) -> list[dict[str, Any]]:
    """``addRoleACL`` commands that give each identity's role (its ACL now in ``roles``, as
    ``getRole`` answers) what this version's access needs and it lacks. Nothing is removed or
    changed: an ACL an operator added stays, and so does one an operator set to deny."""
    commands: list[dict[str, Any]] = []
    done: set[str] = set()
    for ident in identities:
        if ident.rolename in done or ident.rolename not in roles:
            continue
        done.add(ident.rolename)
        have = {(a.get("acltype"), a.get("topic")) for a in roles[ident.rolename]}
        commands += [{"command": "addRoleACL", "rolename": ident.rolename, **acl}
                     for acl in role_acls(ident.access)
                     if (acl["acltype"], acl["topic"]) not in have]
    return commands


def client_commands(identities: Iterable[Identity], *, existing_roles: Iterable[str] = (),
                    description: str | None = None) -> list[dict[str, Any]]:
    """Commands that create the identities' roles (once each, unless in ``existing_roles``)
    and their clients on a running broker; ``description``: each client's ``textdescription``
    (how the hub marks the credentials it makes, :mod:`cloud_hub.identity.audit`)."""
    made = set(existing_roles)
    commands: list[dict[str, Any]] = []
    for ident in identities:
        if ident.rolename not in made:
            made.add(ident.rolename)
            commands.append({"command": "createRole", "rolename": ident.rolename,
                             "acls": role_acls(ident.access)})
        c = ident.credential
        commands.append({"command": "createClient", "username": c.username,
                         "password": c.password, "clientid": c.client_id,
                         "roles": [{"rolename": ident.rolename}],
                         **({"textdescription": description} if description else {})})
    return commands


def remove_commands(username: str, rolename: str) -> list[dict[str, Any]]:
    """Commands that delete a client (the broker disconnects it at once) and its role."""
    return [{"command": "deleteClient", "username": username},
            {"command": "deleteRole", "rolename": rolename}]


class DynsecClient:
    """One MQTT connection that sends dynamic-security commands and waits for the answers.

    Thread-safe: concurrent callers each wait for the responses of their own message."""

    def __init__(self, *, host: str, port: int, credential: Credential,
                 ca_file: Path | str | None, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._host, self._port = host, port
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        self._answered = threading.Condition(self._lock)
        self._refused: str | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=credential.client_id,
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(credential.username, credential.password)
        if ca_file is not None:
            client.tls_set_context(client_context(str(ca_file)))
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    # -- paho callbacks ----------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._refused = str(rc)
            return
        client.subscribe(DYNSEC_RESPONSE, qos=1)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self._connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("dynsec: unreadable response on %s", message.topic)
            return
        with self._answered:
            for r in responses:
                key = r.get("correlationData") if isinstance(r, dict) else None
                if isinstance(key, str) and key in self._pending:
                    self._pending[key] = r
            self._answered.notify_all()

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> DynsecClient:
        try:
            self._client.connect_async(self._host, self._port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise DynsecError(f"broker {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        return self

    def wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self._refused is not None:
                raise DynsecError(f"the broker refused the admin connection: {self._refused}")
            if time.monotonic() > deadline:
                raise DynsecError(
                    f"no admin connection to the broker {self._host}:{self._port} "
                    f"within {timeout:.0f}s")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> DynsecClient:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- commands ----------------------------------------------------------------------
    def execute(self, commands: Sequence[dict[str, Any]], *, ignore: Iterable[str] = (),
                progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Run ``commands`` in order; raise :class:`DynsecError` naming the first that failed
        (unless its error text contains one of ``ignore``, e.g. "not found" for deletes).
        ``progress`` hears how many commands the broker has answered so far."""
        self.wait_connected(self.timeout)
        ignored = tuple(ignore)
        answers: list[dict[str, Any]] = []
        for start in range(0, len(commands), _COMMANDS_PER_MESSAGE):
            answers += self._execute_part(commands[start:start + _COMMANDS_PER_MESSAGE])
            if progress is not None:
                progress(len(answers))
        for command, answer in zip(commands, answers, strict=True):
            error = answer.get("error")
            if error and not any(s in str(error) for s in ignored):
                raise DynsecError(f"{command['command']} {_subject(command)}: {error}")
        return answers

    def _execute_part(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        keys = [uuid.uuid4().hex for _ in commands]
        body = {"commands": [{**c, "correlationData": k} for c, k in zip(commands, keys,
                                                                         strict=True)]}
        with self._answered:
            for k in keys:
                self._pending[k] = {}
        try:
            info = self._client.publish(DYNSEC_CONTROL, json.dumps(body), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise DynsecError(f"cannot send to the broker: {mqtt.error_string(info.rc)}")
            deadline = time.monotonic() + self.timeout
            with self._answered:
                while not all(self._pending[k] for k in keys):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DynsecError(
                            f"the broker did not answer {len(keys)} dynamic-security "
                            f"command(s) within {self.timeout:.0f}s (is the plugin loaded, "
                            "and may this identity use $CONTROL/dynamic-security?)")
                    self._answered.wait(left)
                return [self._pending[k] for k in keys]
        finally:
            with self._answered:
                for k in keys:
                    self._pending.pop(k, None)


def _subject(command: dict[str, Any]) -> str:
    for key in ("username", "rolename", "groupname"):
        if key in command:
            return repr(command[key])
    return ""
