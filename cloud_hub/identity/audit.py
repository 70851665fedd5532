"""The broker's device credentials checked against the registry, which is the truth.

Revoking a device marks it revoked in the registry, then deletes its credential on the broker.
A hub process that dies between the two, or a broker that does not answer (a 503 the operator
never retried), leaves a revoked device able to connect; an enrollment that fails between making
the credential and recording the device leaves a credential nobody holds. The audit deletes
what the registry says should not exist, and names every enrolled device whose credential the
broker lacks (it cannot connect, and the hub cannot make the credential back: it keeps no
password; revoke it and enroll it again). The hub runs it in one process every
``EDGELOOP_BROKER_AUDIT_S``; ``cloud-hub broker audit`` runs it now.

A device credential is a client holding the role ``device:<its username>``. The audit deletes:

- that of a device revoked in the registry, made before the revocation (or made without the
  enrollment's mark, by an earlier version): a revocation's broker step that never happened;
- one marked by an enrollment (``created_at=`` in its description) of a device not enrolled now,
  older than ``grace_s``: an enrollment that failed before recording the device. Younger ones
  are enrollments under way, which make the credential first and record the device after.

It leaves every other client (the hub's own, the broker admin's, an operator's), and device
credentials the hub did not make for devices it never enrolled. Each deletion is judged again
on a fresh read of the broker and the registry just before it is sent; an enrollment in another
hub process between that read and the deletion (milliseconds) would lose its new credential,
and the next audit would name that device as missing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.db.enrollments import Enrollment
from cloud_hub.identity.dynsec import DynsecClient, remove_commands
from cloud_hub.identity.roles import device_rolename

__all__ = ["FAILED_ENROLLMENT_GRACE_S", "CredentialAudit", "CredentialAuditor",
           "audit_credentials", "delete_revoked", "enrollment_mark"]

log = logging.getLogger(__name__)

# An enrollment makes its credentials, then records the devices: seconds, or minutes for a job
# of many thousands. A marked credential of a device not enrolled is left this long.
FAILED_ENROLLMENT_GRACE_S = 3600.0
_PAGE = 1000  # clients per listClients command
_STEP = 500  # registry rows per query
_MARK = re.compile(r"\bcreated_at=(\d+(?:\.\d+)?)\b")


def enrollment_mark(now: float) -> str:
    """The description an enrollment gives the credentials it makes."""
    return f"edgeloop enrollment created_at={now:.3f}"


@dataclass(frozen=True)
class _Credential:
    username: str
    created_at: float | None  # from the enrollment's mark; None: made without one


@dataclass
class CredentialAudit:
    """One audit: ``deleted`` maps each device whose credential was deleted (or would be, in a
    dry run) to why; ``missing``: enrolled devices with a hub-made credential the broker lacks."""

    at: float
    device_credentials: int  # on the broker, before the audit
    deleted: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _created_at(description: object) -> float | None:
    match = _MARK.search(description) if isinstance(description, str) else None
    return float(match.group(1)) if match else None


def _as_credential(client: object) -> _Credential | None:
    """A listed client, if it is a device credential."""
    if not isinstance(client, dict) or not isinstance(client.get("username"), str):
        return None
    name = client["username"]
    roles = {r.get("rolename") for r in client.get("roles") or [] if isinstance(r, dict)}
    if device_rolename(name) not in roles:
        return None
    return _Credential(name, _created_at(client.get("textdescription")))


def _listed(admin: DynsecClient, page: int) -> dict[str, _Credential]:
    """Every device credential on the broker, ``page`` clients per command."""
    found: dict[str, _Credential] = {}
    offset = 0
    while True:
        answer = admin.execute([{"command": "listClients", "verbose": True, "count": page,
                                 "offset": offset}])[0]
        data = answer.get("data") or {}
        clients = data.get("clients") or []
        for credential in filter(None, map(_as_credential, clients)):
            found[credential.username] = credential
        offset += len(clients)
        if not clients or offset >= int(data.get("totalCount") or 0):
            return found


def _fetched(admin: DynsecClient, names: list[str]) -> dict[str, _Credential]:
    """These clients as the broker has them now (those gone are left out)."""
    answers = admin.execute([{"command": "getClient", "username": n} for n in names],
                            ignore=("not found",))
    clients = [(a.get("data") or {}).get("client") for a in answers if not a.get("error")]
    return {c.username: c for c in filter(None, map(_as_credential, clients))}


def _registry(engine: Engine, names: Iterable[str]) -> dict[str, Enrollment]:
    wanted = sorted(set(names))
    rows: dict[str, Enrollment] = {}
    with Session(engine) as session:
        for i in range(0, len(wanted), _STEP):
            rows.update((r.device_id, r) for r in session.exec(
                select(Enrollment).where(col(Enrollment.device_id).in_(wanted[i:i + _STEP]))))
    return rows


def _with_credential(engine: Engine) -> set[str]:
    """Enrolled devices whose credential the hub made."""
    with Session(engine) as session:
        return set(session.exec(select(Enrollment.device_id).where(
            col(Enrollment.revoked_at).is_(None), col(Enrollment.broker_credential))))


def _lacking(admin: DynsecClient, engine: Engine, names: list[str]) -> list[str]:
    """Those of ``names`` still enrolled with a hub-made credential and still without one on
    the broker, on fresh reads (a revocation, or an enrollment again, may have come since)."""
    if not names:
        return []
    rows = _registry(engine, names)
    present = _fetched(admin, names)
    return [n for n in names if n not in present and (row := rows.get(n)) is not None
            and row.revoked_at is None and row.broker_credential]


def _why_delete(credential: _Credential, row: Enrollment | None, *, now: float,
                grace_s: float) -> str | None:
    """Why this credential should not exist (None: leave it)."""
    if row is not None and row.revoked_at is None:
        return None  # enrolled
    made = credential.created_at
    if row is not None and row.revoked_at is not None and (made is None or made <= row.revoked_at):
        return f"revoked at {_when(row.revoked_at)}, its credential left on the broker"
    if made is not None and now - made > grace_s:
        return (f"its credential was made at {_when(made)} by an enrollment that never "
                "recorded the device")
    return None


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _delete_judged(admin: DynsecClient, engine: Engine, names: list[str], *, now: float,
                   grace_s: float, dry_run: bool = False) -> dict[str, str]:
    """Of these credentials, delete those that should not exist, judged on fresh reads of the
    broker and the registry (an enrollment or a revocation may have come since they were
    listed); each one deleted (or, in a dry run, that would be), and why."""
    rows = _registry(engine, names)
    verdicts = {name: why for name, credential in _fetched(admin, names).items()
                if (why := _why_delete(credential, rows.get(name), now=now,
                                       grace_s=grace_s)) is not None}
    if not dry_run and verdicts:
        # All in one call: the broker saves its whole configuration once per message,
        # not once per device (measured: 180 ms a device, one by one, on 2,000 clients).
        admin.execute([c for name in verdicts
                       for c in remove_commands(name, device_rolename(name))],
                      ignore=("not found",))
    return verdicts


def delete_revoked(admin: DynsecClient, engine: Engine, names: list[str]) -> dict[str, str]:
    """Of these devices, delete the credentials their revocation should have deleted (the
    audit's rule for revoked devices, on fresh reads: a device enrolled again since keeps its
    new credential); each device deleted, and why. Raises
    :class:`~cloud_hub.identity.dynsec.DynsecError` when the broker does not answer."""
    if not names:
        return {}
    # no grace ends: only the rule for revoked devices can delete
    return _delete_judged(admin, engine, sorted(set(names)), now=time.time(),
                          grace_s=float("inf"))


def audit_credentials(admin: DynsecClient, engine: Engine, *, now: float | None = None,
                      grace_s: float = FAILED_ENROLLMENT_GRACE_S, dry_run: bool = False,
                      page: int = _PAGE) -> CredentialAudit:
    """Check the broker's device credentials against the registry: delete those that should
    not exist (unless ``dry_run``) and name the enrolled devices that lack one. Raises
    :class:`~cloud_hub.identity.dynsec.DynsecError` when the broker does not answer."""
    at = time.time() if now is None else now
    enrolled = _with_credential(engine)  # read first: each of these has its credential by now
    listed = _listed(admin, page)
    rows = _registry(engine, listed)
    audit = CredentialAudit(at=at, device_credentials=len(listed), dry_run=dry_run,
                            missing=_lacking(admin, engine, sorted(enrolled - set(listed))))
    doomed = [n for n, c in listed.items()
              if _why_delete(c, rows.get(n), now=at, grace_s=grace_s) is not None]
    for i in range(0, len(doomed), _STEP):
        verdicts = _delete_judged(admin, engine, doomed[i:i + _STEP], now=at, grace_s=grace_s,
                                  dry_run=dry_run)
        if not dry_run:
            for name, why in verdicts.items():
                log.warning("broker audit: deleted the credential of device %s (%s)", name, why)
        audit.deleted.update(verdicts)
    if audit.missing:
        shown = ", ".join(audit.missing[:10]) + (" …" if len(audit.missing) > 10 else "")
        log.warning("broker audit: %d enrolled device(s) have no credential on the broker and "
                    "cannot connect: %s (revoke and enroll them again)", len(audit.missing),
                    shown)
    return audit


class CredentialAuditor:
    """The tick of the hub's ``broker-audit`` leased worker: one audit per tick, through the
    hub's broker-admin connection (between this process's enrollments), and its figures."""

    def __init__(self, audit: Callable[..., CredentialAudit], *,
                 grace_s: float = FAILED_ENROLLMENT_GRACE_S) -> None:
        self._audit = audit  # DeviceEnrollment.audit
        self._grace_s = grace_s
        self.last: CredentialAudit | None = None
        self.audits = 0
        self.deleted = 0

    def __call__(self, now: float, _lease: object = None) -> bool:
        # Not fenced by the lease: its deletions are idempotent, and judged on fresh reads.
        report = self._audit(now=now, grace_s=self._grace_s)
        self.last = report
        self.audits += 1
        self.deleted += len(report.deleted)
        return False

    def snapshot(self) -> dict[str, Any]:
        last = self.last
        return {"credential_audits": self.audits, "credentials_deleted": self.deleted,
                "devices_without_credential": len(last.missing) if last else 0,
                "credential_audit_at": last.at if last else 0.0}
