"""The attacks of the attack scenario (:mod:`simulator.attacks`), in order, each tried with the
access an attacker would have; each gives an :class:`AttackResult`: refused or not, and by whom.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.cli.client import ApiError, HubClient
from shared.codec import split
from shared.manifest import parse_manifest
from shared.messages import Desired, DeviceStatus, HubStatus, ModelRef, TelemetryBatch, encode
from shared.signing import generate_signing_key
from simulator.broker import Broker, Credential
from simulator.fleet import Fleet
from simulator.probe import Probe, wait_until

__all__ = ["AttackResult", "Attacks", "Say"]

log = logging.getLogger(__name__)
Say = Callable[[str], None]
_MODEL_WAIT_S = 40.0


@dataclass(frozen=True)
class AttackResult:
    name: str
    refused: bool
    refused_by: str | None  # broker | hub | agent
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _refused_by_broker(name: str, answer: str, what: str) -> AttackResult:
    refused = answer in ("Not authorized", "disconnected by the broker")
    return AttackResult(name, refused, "broker" if refused else None, f"{what}: {answer}")


class Attacks:
    """The attacks, in order; each returns what happened. ``hub_id``: the client id of the
    hub the fleet runs with."""

    def __init__(self, broker: Broker, client: HubClient, fleet: Fleet, workdir: Path,
                 models: list[tuple[str, int]], say: Say, *, hub_id: str) -> None:
        self.broker, self.client, self.fleet, self.say = broker, client, fleet, say
        self.hub_id = hub_id
        self.topics = broker.topics
        self.workdir = workdir
        self.models = models  # (name, version) oldest first; every device runs the newest
        self.honest = sorted(fleet.devices)
        self.victim = self.honest[-1]  # where the forged models are aimed
        self.probes: list[Probe] = []
        self.revoke_seconds: float | None = None
        self.revoke_kick_seconds: float | None = None
        bundle = client.post("/devices/mallory/enroll", {"state_dir": str(workdir / "mallory")})
        self.mallory = Credential(bundle["username"], bundle["password"], bundle["username"])
        self.rogue = broker.add_hub("rogue-hub")  # a stolen hub-level broker credential

    def probe(self, credential: Credential | None, client_id: str | None = None) -> Probe:
        p = Probe(self.broker, credential, client_id=client_id)
        self.probes.append(p)
        return p

    def close(self) -> None:
        for p in self.probes:
            p.close()

    # -- a compromised device --------------------------------------------------------------
    def impersonation(self) -> AttackResult:
        other = self.honest[0]
        batch = TelemetryBatch(device_id=other, seq=10**9, epoch="0" * 16, channels=["x"],
                               ts=[time.time()], values=[[1e9]])
        answer = self.probe(self.mallory).publish(self.topics.telemetry(other), encode(batch))
        return _refused_by_broker("impersonating another device", answer,
                                  f"mallory publishing {other}'s telemetry")

    def device_writes(self, name: str, topic: str, payload: bytes) -> AttackResult:
        answer = self.probe(self.mallory).publish(topic, payload, retain=True)
        return _refused_by_broker(name, answer, f"mallory writing {topic}")

    def writes(self) -> list[AttackResult]:
        victim = self.honest[0]
        name, version = self.models[-1]
        desired = Desired(device_id=victim, model=ModelRef(name=name, version=99),
                          issued_at=time.time())
        forged_session = HubStatus(device_id=self.hub_id, state=DeviceStatus.ONLINE,
                                   session="f0f0f0f0", at=time.time())
        return [
            self.device_writes("a device writing desired", self.topics.desired(victim),
                               encode(desired)),
            self.device_writes("a device writing models/#", self.topics.manifest(name, 99),
                               b'{"forged": true}'),
            self.device_writes("a device writing hub status (forged hub session)",
                               self.topics.hub_status(self.hub_id), encode(forged_session)),
        ]

    def takeovers(self) -> list[AttackResult]:
        results = []
        for name, client_id in (("client-id takeover of the hub", self.hub_id),
                                ("client-id takeover of a device", self.honest[0])):
            with_credential = self.probe(self.mallory, client_id=client_id)
            anonymous = self.probe(None, client_id=client_id)
            time.sleep(1.0)  # a taken-over session would be gone by now
            health = self.client.get("/health")
            victim_up = (health.get("mqtt_connected") if client_id == self.hub_id
                         else self.fleet.statuses()[client_id].get("connected"))
            refused = (with_credential.connack == "Not authorized"
                       and anonymous.connack == "Not authorized" and bool(victim_up))
            results.append(AttackResult(
                name, refused, "broker" if refused else None,
                f"as {client_id!r} with mallory's credential: {with_credential.connack}; "
                f"anonymous: {anonymous.connack}; {client_id} still connected: {victim_up}"))
        return results

    def _dead_letter_of(self, topic: str, size: int, since: float) -> dict[str, Any] | None:
        for letter in self.client.get_all("/dead-letters", limit=500):
            if (letter.get("topic") == topic and letter.get("payload_size") == size
                    and float(letter.get("received_at") or 0) >= since):
                return dict(letter)
        return None

    def _hub_refuses(self, name: str, payload: bytes, what: str) -> AttackResult:
        topic = self.topics.telemetry("mallory")
        since = time.time() - 1.0
        answer = self.probe(self.mallory).publish(topic, payload)
        if answer in ("Not authorized", "disconnected by the broker"):
            return AttackResult(name, True, "broker", f"{what}: {answer}")
        letter = wait_until(lambda: self._dead_letter_of(topic, len(payload), since), 20.0)
        stored = any(r["device_id"] == "mallory" for r in self.client.get_all(
            "/telemetry/summary"))
        refused = letter is not None and not stored
        reason = letter.get("reason") if letter else "no dead letter"
        return AttackResult(name, refused, "hub" if refused else None,
                            f"{what}: broker {answer}; hub: {str(reason)[:160]}")

    def payloads(self) -> list[AttackResult]:
        return [
            self._hub_refuses("oversized payload (over the hub's message limit)",
                              b'{"v": 2, "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}',
                              "3 MiB on mallory's own telemetry"),
            self._hub_refuses("malformed payload", b'{"v": 2, "device_id": "mallory", "seq": ',
                              "truncated JSON on mallory's own telemetry"),
            _refused_by_broker(
                "oversized payload (over the broker's packet limit)",
                self.probe(self.mallory).publish(self.topics.telemetry("mallory"),
                                                 b"x" * (9 * 1024 * 1024)),
                "9 MiB on mallory's own telemetry"),
        ]

    # -- no credential, or one the hub never made ------------------------------------------
    def unenrolled(self) -> list[AttackResult]:
        nobody = self.probe(None, client_id="ghost-0")
        results = [AttackResult(
            "unenrolled device (no credential)", nobody.connack == "Not authorized",
            "broker" if nobody.connack == "Not authorized" else None,
            f"anonymous CONNECT as ghost-0: {nobody.connack}")]
        before = int(self.client.get("/metrics").get("unenrolled_refused") or 0)
        ghost = self.probe(self.broker.add_device("ghost-1"))  # made outside the hub
        batch = TelemetryBatch(device_id="ghost-1", seq=0, epoch="0" * 16, channels=["x"],
                               ts=[time.time()], values=[[1.0]])
        answer = ghost.publish(self.topics.telemetry("ghost-1"), encode(batch))
        counted = wait_until(lambda: int(self.client.get("/metrics").get("unenrolled_refused") or 0)
                        > before, 20.0)
        listed = any(d["device_id"] == "ghost-1" for d in self.client.get_all("/devices"))
        refused = bool(counted) and not listed
        results.append(AttackResult(
            "unenrolled device (credential made outside the hub)", refused,
            "hub" if refused else None,
            f"broker: {ghost.connack}, publish {answer}; hub counted the refusal: "
            f"{bool(counted)}; device registered: {listed}"))
        return results

    # -- a stolen hub-level credential: only the agent can refuse --------------------------
    def _device(self, device_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/devices/{device_id}"))

    def _offer(self, name: str, version: int, manifest: bytes | None,
               chunks: list[bytes] | None) -> dict[str, Any]:
        """As the rogue: retain a manifest and chunks (unless None), then set the victim's
        desired to them; what the victim then reported."""
        rogue = self.probe(self.rogue)
        for i, chunk in enumerate(chunks or []):
            rogue.publish(self.topics.chunk(name, version, i), chunk, retain=True)
        if manifest is not None:
            rogue.publish(self.topics.manifest(name, version), manifest, retain=True)
        desired = Desired(device_id=self.victim, model=ModelRef(name=name, version=version),
                          issued_at=time.time())
        answer = rogue.publish(self.topics.desired(self.victim), encode(desired), retain=True)

        def outcome() -> dict[str, Any] | None:
            d = self._device(self.victim)
            active = d.get("active_model") or {}
            reported = d.get("reported_model") or {}
            if active.get("version") == version and d.get("reported_state") == "active":
                return d
            if reported.get("version") == version and d.get("reported_state") in (
                    "failed", "rolled_back"):
                return d
            return None

        result = wait_until(outcome, _MODEL_WAIT_S) or self._device(self.victim)
        result["_desired_answer"] = answer
        return result

    def _restore(self) -> None:
        """The hub's own desired for the victim again, and the newest model active on it."""
        name, version = self.models[-1]
        self.client.put(f"/devices/{self.victim}/desired",
                        {"model": {"name": name, "version": version}})
        wait_until(lambda: (self._device(self.victim).get("active_model") or {}).get("version")
              == version, 120.0)

    def _judge(self, name: str, outcome: dict[str, Any], version: int) -> AttackResult:
        active = outcome.get("active_model") or {}
        installed = active.get("version") == version
        error = outcome.get("reported_error") or outcome.get("reported_state")
        if installed:
            self._restore()
            return AttackResult(name, False, None,
                                f"{self.victim} installed v{version} (desired written by a "
                                f"stolen hub credential: {outcome['_desired_answer']})")
        return AttackResult(name, True, "agent",
                            f"{self.victim} kept v{active.get('version')}: "
                            f"{str(error)[:200]}")

    def forged_models(self) -> list[AttackResult]:
        name, newest = self.models[-1]
        genuine = parse_manifest(json.dumps(self.client.get(f"/models/{name}/{newest}")
                                            ["manifest"]))
        tflite = bytes(self.client.get(f"/models/{name}/{newest}/tflite"))
        chunks = split(tflite, genuine.chunk_size)
        results = []
        unsigned = genuine.replace(version=90, signature="")
        results.append(self._judge("unsigned model", self._offer(
            name, 90, unsigned.to_bytes(), chunks), 90))
        self._restore()
        stranger = generate_signing_key().sign(genuine.replace(version=91))
        results.append(self._judge("model signed by an unknown key", self._offer(
            name, 91, stranger.to_bytes(), chunks), 91))
        self._restore()
        return results

    def older_models(self) -> list[AttackResult]:
        name, old = self.models[0]
        results = [self._judge("downgrade to an older signed version",
                               self._offer(name, old, None, None), old)]
        self._restore()
        # Replay: the hub retired the old version (its retained copies are cleared); the
        # rogue puts back the exact bytes it recorded earlier.
        manifest = parse_manifest(json.dumps(self.client.get(f"/models/{name}/{old}")
                                             ["manifest"]))
        tflite = bytes(self.client.get(f"/models/{name}/{old}/tflite"))
        try:
            self.client.post(f"/models/{name}/{old}/retire")
        except ApiError as exc:
            log.warning("attacks: retiring %s v%d: %s", name, old, exc)
        results.append(self._judge("replayed older signed model", self._offer(
            name, old, manifest.to_bytes(), split(tflite, manifest.chunk_size)), old))
        self._restore()
        return results

    # -- revocation --------------------------------------------------------------------------
    def revoked_reconnects(self) -> AttackResult:
        bundle = self.client.post("/devices/pump-rev/enroll",
                                  {"state_dir": str(self.workdir / "pump-rev")})
        credential = Credential(bundle["username"], bundle["password"], bundle["username"])
        device = self.probe(credential)
        if not device.connected:
            return AttackResult("a revoked device that reconnects", False, None,
                                f"the device did not connect before revocation: {device.connack}")
        started = time.monotonic()
        self.client.post("/devices/pump-rev/revoke")
        kicked = device.dropped.wait(10)
        self.revoke_kick_seconds = round(time.monotonic() - started, 3) if kicked else None
        again = self.probe(credential)
        self.revoke_seconds = round(time.monotonic() - started, 3)
        refused = kicked and again.connack == "Not authorized"
        return AttackResult("a revoked device that reconnects", refused,
                            "broker" if refused else None,
                            f"disconnected {self.revoke_kick_seconds} s after the revoke "
                            f"command; reconnect: {again.connack}")
